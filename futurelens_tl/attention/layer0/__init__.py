"""Weight-only decomposition of first-layer attention (Kamoda et al., NAACL Findings 2025).

Reference: ``shared/reference/layer0-decomposition.md`` (cited as "ref §n"; rotary models: its
addendum "rotary (Llama-family) models" and §12.2-12.4).

Layer-0 attention is an exact function of the weights and of the per-token norm scale
``sigma``. For learned absolute positions::

    alpha[i, j, h] = softmax_{j <= i} (T_ee + T_ep + T_pe + T_pp + T_e + T_p)[i, j, h] / sqrt(d')

with ``W^QK_h = W~Q_h W~K_h^T`` and ``b^QK_h = b~Q_h W~K_h^T`` after folding ``C diag(gamma)``
and ``beta`` into the query/key projections (ref §2-§4). For rotary models (RMSNorm or
LayerNorm, GQA, partial rotary, q/k biases) the score is an exact function of (query token, key
token, ``Delta = i - j``), ``x_hat_i W~Q M(Delta) W~K^T x_hat_j^T`` plus bias terms, split exactly
into the positional kernel ``f(Delta)``, two mixed terms and a token-token term around a reference
token (addendum). :func:`decompose_first_layer` builds a :class:`Layer0Decomposition` from the
weights alone (no forward pass); it answers:

* :meth:`~Layer0Decomposition.terms` / :meth:`~Layer0Decomposition.attention`: the terms for
  actual token sequences and their softmax (equals ``blocks.0.attn.hook_pattern``);
  :meth:`~Layer0Decomposition.frequency_terms`: the rotary per-frequency split,
* :meth:`~Layer0Decomposition.sigma_table`: ``Sigma[j, v]`` over (position, token) (ref §5;
  absolute models),
* :meth:`~Layer0Decomposition.positional_attention`, :meth:`~Layer0Decomposition.position_terms`,
  :meth:`~Layer0Decomposition.position_terms_by_distance` (fixed-query profile),
  :meth:`~Layer0Decomposition.positional_kernel` (rotary): weight-only position analyses
  (ref §6.1, §6.3),
* :meth:`~Layer0Decomposition.token_scores`, :meth:`~Layer0Decomposition.top_prefixes`,
  :meth:`~Layer0Decomposition.detokenization_auroc`,
  :meth:`~Layer0Decomposition.detokenization_table`: token-token analyses (ref §6.2, §8, §11),
* :meth:`~Layer0Decomposition.contributions`: leave-one-term-out KL and the additive integrated
  alternative (ref §7).

Modules: :mod:`.core` (the result and its terms), :mod:`.build`, :mod:`.rotary`, :mod:`.sigma`,
:mod:`.positions`, :mod:`.tokens`, :mod:`.bigrams`, :mod:`.auroc`, :mod:`.contrib`, :mod:`.views`.
"""

from __future__ import annotations

from futurelens_tl.attention.layer0._util import _percentile_rows
from futurelens_tl.attention.layer0.auroc import (
    _auroc_sorted_rows,
    _weighted_auroc_csr,
    _weighted_auroc_rows,
    auroc_table,
)
from futurelens_tl.attention.layer0.bigrams import BigramCounts, count_bigrams
from futurelens_tl.attention.layer0.build import decompose_first_layer, detokenization_scores
from futurelens_tl.attention.layer0.contrib import Layer0Contributions
from futurelens_tl.attention.layer0.core import (
    ROTARY_TERM_NAMES,
    TERM_GROUPS,
    TERM_NAMES,
    Layer0Decomposition,
)
from futurelens_tl.attention.layer0.rotary import RopeSpec, rope_spec

__all__ = [
    "ROTARY_TERM_NAMES",
    "TERM_GROUPS",
    "TERM_NAMES",
    "BigramCounts",
    "Layer0Contributions",
    "Layer0Decomposition",
    "RopeSpec",
    "auroc_table",
    "count_bigrams",
    "decompose_first_layer",
    "detokenization_scores",
    "rope_spec",
]

_PRIVATE = (_percentile_rows, _weighted_auroc_csr, _weighted_auroc_rows, _auroc_sorted_rows)
