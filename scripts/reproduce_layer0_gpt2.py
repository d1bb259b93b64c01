"""Reproduce the GPT-2 small layer-0 numbers of Kamoda et al. (2025) with futurelens_tl.

Needs the Hugging Face hub (GPT-2 weights) and, for the AUROC table, OpenWebText bigram counts.
Not run in CI. Prints next to the published values of reference layer0-decomposition.md §9:

1. the six-term identity on a few real sentences (max |Delta attention|, §9.1),
2. the data-free T_ee scores for suffix ``iens`` (§9.4) and top-5 prefixes for ``iens``,
   ``tarian``, `` Jackson`` in heads 4 and 7 (§9.3),
3. the mean detokenization AUROC per head (§9.2), from bigram counts over OpenWebText
   (``--n-docs`` documents streamed with ``datasets``; the paper's table used the full corpus,
   so expect drift in the third decimal with fewer documents), or from a saved ``--bigrams``
   file (``.npz`` with ``indptr``, ``prefix``, ``count``, ``vocab_size``; ``--save-bigrams``
   writes one).

Usage::

    python scripts/reproduce_layer0_gpt2.py --n-docs 20000 --save-bigrams owt_bigrams.npz
    python scripts/reproduce_layer0_gpt2.py --bigrams owt_bigrams.npz
    python scripts/reproduce_layer0_gpt2.py --skip-auroc
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import futurelens_tl as fl
from futurelens_tl.attention.layer0 import BigramCounts, count_bigrams

PUBLISHED_AUROC = [0.732, 0.404, 0.549, 0.634, 0.694, 0.286, 0.793, 0.876, 0.445, 0.401, 0.615,
                   0.806]
PUBLISHED_TOP5 = {
    ("iens", 4): ["_sapiens", "_famiens", "_Sapiens", "Hugiens", "Patiens"],
    ("iens", 7): ["Aliens", "_sapiens", "_aliens", "_ALiens", "afiens"],
    ("tarian", 4): ["Libertarian", "_Libertarian", "nontarian", "ilatertarian", "_Techntarian"],
    ("tarian", 7): ["_vegetabletarian", "_Partarian", "_metaltarian", "_propertarian",
                    "_Danieltarian"],
    (" Jackson", 4): ["_JesseJackson", "_ArcheJackson", "_TriJackson", "_CortJackson",
                      "_EmersonJackson"],
    (" Jackson", 7): ["_MichaelJackson", "_PeterJackson", "MichaelJackson", "_JesseJackson",
                      "PeterJackson"],
}
# §9.4: head 7, suffix iens (id 10465): prefix id -> published score (float16 sigma_bar)
PUBLISHED_IENS_H7 = {2348: 41.437702, 31841: 41.008968, 435: 38.2491, 8355: 36.045887,
                     1878: 35.321766, 26832: 34.854691, 4434: 30.680719, 35980: 29.079447,
                     1703: 16.197947, 24412: -42.426086, 43969: -41.117054}
PUBLISHED_IENS_H0 = {0: 6.533049, 1: 2.131057, 2: -5.898291, 3: 12.169627, 4: -6.008289}
PUBLISHED_IENS_H11 = {50252: 3.537605, 50253: -3.62809, 50254: -0.355489, 50255: -0.480662,
                      50256: 12.910315}


def owt_bigrams(tokenizer, n_docs: int, vocab: int) -> BigramCounts:
    from datasets import load_dataset

    ds = load_dataset("openwebtext", split="train", streaming=True, trust_remote_code=True)

    def docs():
        for k, ex in enumerate(ds):
            if k >= n_docs:
                break
            yield tokenizer(ex["text"], add_special_tokens=False)["input_ids"]

    return count_bigrams(docs(), vocab)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--model", default="gpt2")
    ap.add_argument("--device", default=None)
    ap.add_argument("--n-docs", type=int, default=20000)
    ap.add_argument("--bigrams", default=None)
    ap.add_argument("--save-bigrams", default=None)
    ap.add_argument("--skip-auroc", action="store_true")
    args = ap.parse_args()

    model = fl.load_model(args.model, device=args.device)
    view = fl.as_view(model)
    dec = fl.decompose_first_layer(model)
    print(f"model {args.model}: basis {dec.basis}, norm {dec.norm}, H={dec.n_heads}")

    # 1. identity
    tok = view.to_tokens(["The quick brown fox jumps over the lazy dog.",
                          "Homo sapiens and aliens met Michael Jackson in a vegetarian cafe."])
    _, cache = view.run_with_cache(tok, ["blocks.0.attn.hook_pattern"])
    err = (dec.attention(tok) - cache["blocks.0.attn.hook_pattern"]).abs().amax((0, 2, 3))
    print("\n§9.1 six-term identity, max |Delta attention| per head (published <= 2e-4):")
    print("  " + " ".join(f"{e:.1e}" for e in err.tolist()))

    # 2. data-free scores and top prefixes
    sbar16 = dec.sigma_stats()["sigma_bar"].half().float()
    print("\n§9.4 T_ee(iens -> u): ours (float32 sigma_bar) / ours (float16 sigma_bar) / "
          "published")
    for head, table in ((7, PUBLISHED_IENS_H7), (0, PUBLISHED_IENS_H0), (11, PUBLISHED_IENS_H11)):
        s32 = dec.token_scores(10465, head).cpu()
        s16 = s32 * dec.sigma_stats()["sigma_bar"][10465] * dec.sigma_stats()["sigma_bar"]
        s16 = s16 / (sbar16[10465] * sbar16)
        for u, ref in table.items():
            print(f"  head {head:2d} prefix {u:5d} {dec._token_str([u])[0]!r:14} "
                  f"{s32[u]:10.5f} {s16[u]:10.5f} {ref:10.5f}")
    print("\n§9.3 top-5 prefixes (ours | published):")
    for (suffix, head), ref in PUBLISHED_TOP5.items():
        top = dec.top_prefixes(suffix, head, k=5)
        print(f"  {suffix!r:10} head {head}: {' '.join(top['rendered'])}")
        print(f"  {'':10} published: {' '.join(ref)}")

    # 3. AUROC
    if args.skip_auroc:
        return
    if args.bigrams:
        z = np.load(args.bigrams)
        bc = BigramCounts(int(z["vocab_size"]), z["indptr"], z["prefix"], z["count"])
    else:
        t0 = time.time()
        bc = owt_bigrams(view.tokenizer, args.n_docs, dec.d_vocab)
        print(f"\ncounted {bc.nnz} distinct bigrams over {args.n_docs} OpenWebText documents "
              f"in {time.time() - t0:.0f}s")
    if args.save_bigrams:
        np.savez(args.save_bigrams, vocab_size=bc.vocab_size, indptr=bc.indptr,
                 prefix=bc.prefix, count=bc.count)
    auc = dec.detokenization_auroc(bc)
    means = torch.nan_to_num(auc, nan=0.0).mean(-1)
    print("\n§9.2 mean AUROC per head (all suffixes, unseen = 0): ours / published")
    for h in range(dec.n_heads):
        print(f"  head {h:2d}: {means[h]:.3f} / {PUBLISHED_AUROC[h]:.3f}")
    print(f"  highest: head {int(means.argmax())} (published: head 7)")


if __name__ == "__main__":
    main()
