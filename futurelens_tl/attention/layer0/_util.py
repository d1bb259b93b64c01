"""Small helpers shared by the layer-0 modules (no model, no TransformerLens)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor


def _as_int_list(x: int | Sequence[int] | Tensor, arg: str, high: int) -> list[int]:
    if isinstance(x, Tensor):
        vals = [int(v) for v in x.reshape(-1).tolist()]
    elif isinstance(x, (int, np.integer)) and not isinstance(x, bool):
        vals = [int(x)]
    elif isinstance(x, (list, tuple, range, np.ndarray)):
        vals = [int(v) for v in x]
    else:
        raise TypeError(
            f"{arg} must be an int, a sequence of ints or a tensor, got {type(x).__name__}"
        )
    if not vals:
        raise ValueError(f"{arg} is empty; give at least one value.")
    bad = [v for v in vals if not 0 <= v < high]
    if bad:
        raise ValueError(f"{arg}={bad[:5]} is out of range; allowed 0..{high - 1}.")
    return vals


def _percentile_rows(x: Tensor, q: float) -> Tensor:
    """Percentile ``q`` (0-100) of each row of ``x``, numpy ``linear``, via partial top-k.

    Only the two order statistics around ``q (n - 1) / 100`` are needed, so a ``topk`` of
    ``~ min(q, 100 - q) % `` of the row replaces a full sort (``torch.quantile`` refuses large
    inputs; ref §6.3).
    """
    n = x.shape[-1]
    pos = q / 100.0 * (n - 1)
    lo = int(math.floor(pos))
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    if hi + 1 <= n - lo:  # lower tail: ascending top-k holds indices lo, hi
        v = torch.topk(x, hi + 1, dim=-1, largest=False, sorted=True).values
        s_lo, s_hi = v[..., lo], v[..., hi]
    else:  # upper tail: descending top-k, ascending index m is descending n - 1 - m
        v = torch.topk(x, n - lo, dim=-1, largest=True, sorted=True).values
        s_lo, s_hi = v[..., n - 1 - lo], v[..., n - 1 - hi]
    return s_lo + (s_hi - s_lo) * frac


def _masked_softmax(x: Tensor, mask: Tensor) -> Tensor:
    return torch.softmax(x.masked_fill(~mask, float("-inf")), dim=-1)


def _gauss_legendre_01(n_nodes: int, n_panels: int) -> tuple[Tensor, Tensor]:
    x, w = np.polynomial.legendre.leggauss(n_nodes)
    nodes, weights = [], []
    for k in range(n_panels):
        a, b = k / n_panels, (k + 1) / n_panels
        nodes.append((b - a) / 2 * x + (a + b) / 2)
        weights.append((b - a) / 2 * w)
    return torch.tensor(np.concatenate(nodes)), torch.tensor(np.concatenate(weights))



def _display_html(html: str) -> Any:
    try:
        from IPython.display import HTML, display

        obj = HTML(html)
        display(obj)
        return obj
    except ImportError:  # pragma: no cover
        return html

