"""Write notebooks/00_quickstart.ipynb and notebooks/05_real_models.ipynb (no outputs)."""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1] / "notebooks"


def write(name: str, cells: list) -> None:
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3",
                                                            "display_name": "Python 3"}})
    nbformat.write(nb, ROOT / name)


md, code = new_markdown_cell, new_code_cell

write("00_quickstart.ipynb", [
    md("# futurelens_tl in five minutes\n\nEverything here runs offline on the embedded toy "
       "model: a 4-layer GPT-2-architecture model trained on a synthetic corpus with recurring "
       "multi-token entities, repeated names and ordinal sequences. Swap `fl.toy_model()` for "
       "`fl.load_model(\"gpt2\")` to run the same cells on a real model."),
    code("import futurelens_tl as fl\nfrom futurelens_tl.toy import TOY_PROMPTS, toy_texts\n\n"
         "model = fl.toy_model(verbose=False)\nview = fl.ModelView(model)\nview.describe()"),
    md("## 1. Lenses side by side\n\nThe **logit lens** reads a residual $h$ at layer $l$ with "
       "the model's own final norm (statistics recomputed for $h$) and unembedding: "
       "$\\mathrm{LL}(h) = \\mathrm{softmax}(\\mathrm{LN}_f(h) W_U + b_U)$. The **tuned lens** "
       "first applies a learned affine translator $h + A_l h + b_l$ trained to minimise "
       "$\\mathrm{KL}(P_{final} \\| P_{lens})$. Layer $l$ is the output of block $l$; `embed` "
       "is the embedding output."),
    code("logit = fl.LogitLens(model)\n"
         "tuned = fl.TunedLens.fit(model, toy_texts('train', n=100), tokens=8192, verbose=False)\n"
         "cmp = fl.compare(model, TOY_PROMPTS[0], [logit, tuned])\ncmp"),
    code("cmp.to_dataframe().head()"),
    md("## 2. Measure them on held-out text\n\nPrecision@k against the model's own next-token "
       "prediction, KL to the final distribution (nats), and a bigram baseline."),
    code("ev = fl.evaluate(model, [logit, tuned], toy_texts('test', n=40), k=(1, 5), "
         "max_windows=16, baseline_texts=toy_texts('train', n=100))\n"
         "ev.pivot('kl')"),
    md("## 3. Layer-0 attention from the weights alone\n\nKamoda et al. (2025): the layer-0 "
       "attention logits split exactly into six token/position terms; no forward pass."),
    code("dec = fl.decompose_first_layer(model)\n"
         "tokens = view.to_tokens(TOY_PROMPTS[1])\n"
         "import torch\n_, cache = view.run_with_cache(tokens, ['blocks.0.attn.hook_pattern'])\n"
         "err = (dec.attention(tokens[0]) - cache['blocks.0.attn.hook_pattern'][0]).abs().max()\n"
         "print(f'max |decomposition - model pattern| = {float(err):.2e}')\n"
         "dec.to_dataframe().head()"),
    md("## 4. Head roles\n\nScores for the attention-pattern roles of the survey (Zheng et al. "
       "2024), tagged against their published thresholds."),
    code("tags = fl.tag_heads(model, roles=['previous_token', 'duplicate_token', 'induction', "
         "'attention_sink'], verbose=False)\ntags"),
    md("Next: `01_lenses`, `02_future_lens`, `03_layer0_decomposition`, `04_head_roles`."),
])

write("05_real_models.ipynb", [
    md("# Real models (GPT-2, Pythia, Llama) — documented, not executed in CI\n\nThese cells "
       "download weights from the Hugging Face hub. `fl.load_model` returns the **raw residual "
       "basis** (residuals equal HF `hidden_states`), the basis published tuned lenses and the "
       "official Future Lens prompt were fitted in."),
    code("import futurelens_tl as fl\n\nmodel = fl.load_model('gpt2')            # TL 4 bridge\n"
         "# model = fl.load_model('gpt2', backend='hooked')   # TL 3.x HookedTransformer\n"
         "# model = fl.load_model('EleutherAI/pythia-160m')\n"
         "# model = fl.load_model('meta-llama/Llama-3.2-1B', dtype='bfloat16', device='cuda')"),
    md("## Lenses\n\nTrain a tuned lens on your own text (any list of strings, a .txt or .jsonl "
       "file), or import a published tuned-lens artifact (`config.json` + `params.pt`)."),
    code("from futurelens_tl.data import load_texts\n\ntexts = load_texts('my_corpus.txt')\n"
         "tuned = fl.TunedLens.fit(model, texts, tokens=2**20)\n"
         "tuned.save('gpt2-tuned.safetensors')\n"
         "# tuned = fl.TunedLens.from_tuned_lens('path/to/lens/gpt2', model)\n"
         "fl.compare(model, 'The Eiffel Tower is located in the city of', "
         "[fl.LogitLens(model), tuned])"),
    md("## Future Lens\n\nThe official GPT-J soft prompt (`gptj_soft_prefix.pt`, block 13) loads "
       "onto a raw-basis GPT-J; see `scripts/reproduce_future_lens_gptj.py` for the full paper "
       "reproduction."),
    code("# gptj = fl.load_model('EleutherAI/gpt-j-6B', dtype='bfloat16', device='cuda')\n"
         "# future = fl.FutureLens.load_official_prompt('gptj_soft_prefix.pt', gptj, layer=13)\n"
         "# fl.compare(gptj, 'Marty McFly from', [fl.LogitLens(gptj), future])"),
    md("## Layer 0 and head roles\n\nFor GPT-2 small, `scripts/reproduce_layer0_gpt2.py` prints "
       "the per-head detokenization AUROC and the top prefixes of `iens` next to the published "
       "values."),
    code("dec = fl.decompose_first_layer(model)\ndec.top_prefixes('iens', head=7, k=5)\n"
         "tags = fl.tag_heads(model)\ntags.show()"),
])
