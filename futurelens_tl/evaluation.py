"""Evaluate lenses per layer on a corpus: :func:`evaluate` -> :class:`LensEvaluation`.

The result is one LONG table (one row per lens, method, layer, n_ahead, metric, k, mode,
bucket) so logit, tuned and Future Lens results concatenate and plot together. Columns:

``lens, method, layer, n_ahead, metric, k, mode, token_fed, label_source, bucket, value, n``

* ``mode``: ``"same_position"`` (the lens at position t predicts token t+1+n_ahead from the
  model's own forward), ``"teacher_forced"`` / ``"free_running"`` (Future Lens prompt methods),
  ``"baseline"`` (n-gram baseline; ``layer`` is NA);
* ``metric``: ``precision`` (with ``k``), ``surprisal``, ``kl``, ``entropy``, ``ce`` (nats);
* ``label_source``: ``"model_greedy"`` (argmax of the model's own distribution at the target
  position; the Future Lens convention, future-lens.md §4.1) or ``"corpus"`` (the true token).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from futurelens_tl.lenses.reduction import FinalDistribution, reduce_readout, scratch_for
from futurelens_tl.results import COLUMNS, LensEvaluation

__all__ = ["COLUMNS", "LensEvaluation", "evaluate"]

def _row(**kw: Any) -> dict[str, Any]:
    out = {c: None for c in COLUMNS}
    out.update(kw)
    return out


def _nan_to_none(x: float) -> float | None:
    return None if (x is None or (isinstance(x, float) and math.isnan(x))) else x


def _lens_list(lens_or_lenses: Any) -> list[Any]:
    from futurelens_tl.lenses.base import Lens, check_finite_params

    single = isinstance(lens_or_lenses, Lens) or hasattr(lens_or_lenses, "_evaluate")
    if not single and not isinstance(lens_or_lenses, (list, tuple)):
        raise TypeError(f"lens_or_lenses must be a Lens or a list of lenses, got "
                        f"{type(lens_or_lenses).__name__}")
    items = [lens_or_lenses] if isinstance(lens_or_lenses, Lens) or hasattr(
        lens_or_lenses, "_evaluate") else list(lens_or_lenses)
    if not items:
        raise ValueError("lens_or_lenses is empty; pass a lens or a list of lenses")
    for i, x in enumerate(items):
        if not isinstance(x, Lens) and not hasattr(x, "_evaluate"):
            raise TypeError(f"lens_or_lenses[{i}] is a {type(x).__name__}, not a Lens")
        if isinstance(x, torch.nn.Module):
            check_finite_params(x, f"lens {getattr(x, 'name', i)!r}")
    names = [getattr(x, "name", None) for x in items]
    if len(set(names)) != len(names):
        raise ValueError(f"lens names must be unique, got {names}; pass name=... when building "
                         "(rows of lenses sharing a name would be merged)")
    return items


def _check_table_finite(ev: LensEvaluation, what: str) -> None:
    """Refuse a result whose metric values are NaN/inf where they are defined (n > 0)."""
    from futurelens_tl.lenses.base import NonFiniteError

    t = ev.table
    vals = t["value"].astype(float)
    bad = t[~vals.map(math.isfinite) & (t["n"].fillna(0) > 0) & t["bucket"].isna()]
    if len(bad):
        rows = bad[["lens", "layer", "n_ahead", "metric"]].head(5).to_dict("records")
        raise NonFiniteError(
            f"{what} produced NaN/inf metric values ({len(bad)} rows, e.g. {rows}); the model's "
            "weights or the lens's parameters are non-finite, or its readout overflowed."
        )


def evaluate(
    model: Any,
    lens_or_lenses: Any,
    texts: str | os.PathLike[str] | Sequence[str] | Tensor,
    *,
    n_ahead: Sequence[int] | int = (0,),
    k: Sequence[int] | int = (1, 5, 10),
    label_source: str = "model_greedy",
    layers: Sequence[int] | None = None,
    seq_len: int | None = None,
    max_windows: int | None = 64,
    batch_size: int = 8,
    baseline: bool = True,
    baseline_texts: str | os.PathLike[str] | Sequence[str] | Tensor | None = None,
    buckets: Sequence[Any] | None = None,
    verbose: bool = True,
    **kwargs: Any,
) -> LensEvaluation:
    """Per-layer metrics of one or several lenses on a corpus (one forward per batch).

    For a lens at layer l and position t, and each ``N`` in ``n_ahead``, the prediction is
    scored against the label for token ``t + 1 + N``:

    * ``precision`` (per ``k``): the label is in the lens's top-k (future-lens.md §4.1);
    * ``surprisal``: ``-log P_model(argmax lens)`` under the model's own distribution for that
      token (position ``t + N`` of the real text; future-lens.md §4.1);
    * ``kl``: ``KL(P_model(t + N) || P_lens(t))`` (lenses-and-transformerlens.md §B.2);
    * ``entropy`` of the lens distribution; ``ce``: ``-log P_lens(true token t + 1 + N)``.

    The ``baseline`` rows are a bigram model predicting token ``t + 1 + N`` from token
    ``t + N`` (precision@k and ce). It is fitted on ``baseline_texts`` when given, else on the
    evaluation windows themselves (then it is an optimistic, in-sample baseline; recorded in
    ``meta``).

    Lenses with an ``_evaluate(model, texts, **kwargs)`` method (the Future Lens) are
    delegated to it.

    Args:
        model: TransformerLens model.
        lens_or_lenses: A lens or a list of lenses.
        texts: Corpus (strings, a file, or ``[n, pos]`` windows).
        n_ahead: Token offsets N (0 = next token).
        k: Top-k values for precision.
        label_source: ``"model_greedy"`` (argmax of the model at the target position,
            default) or ``"corpus"`` (the true token).
        layers: Restrict to these layers.
        seq_len: Window length (default ``min(n_ctx, 128)``).
        max_windows: Evaluate at most this many windows.
        batch_size: Windows per forward pass.
        baseline: Add bigram baseline rows.
        baseline_texts: Corpus for the bigram (default: the evaluation windows).
        buckets: Confidence bucket edges (confidence = max P_model at the target position);
            adds bucketed precision@1 rows.
        verbose: Progress bar.
        **kwargs: Passed to a delegated ``_evaluate``.

    Returns:
        :class:`LensEvaluation`.

    Raises:
        ValueError: Unknown ``label_source``, ``k < 1``, negative ``n_ahead``, empty corpus,
            duplicate lens names.
        TypeError: A non-string document in ``texts`` (named by index), a non-lens item.
        LensMismatchError: A lens built on another model (fingerprint) or basis.
        NonFiniteError: NaN/inf model weights, lens parameters or readouts (precision would
            otherwise read 1.0 with NaN KL); the message names the tensors at fault.

    Examples:
        >>> import futurelens_tl as fl
        >>> from futurelens_tl.toy import toy_texts
        >>> model = fl.toy_model(verbose=False)
        >>> ev = fl.evaluate(model, fl.LogitLens(model), toy_texts("test"), max_windows=4,
        ...                  verbose=False)
        >>> sorted(set(ev.table["metric"]))
        ['ce', 'entropy', 'kl', 'precision', 'surprisal']
    """
    import pandas as pd

    from futurelens_tl import data as _data
    from futurelens_tl.lenses.base import NonFiniteError, explain_nonfinite, model_fingerprint
    from futurelens_tl.metrics import NgramBaseline, _check_ks, confidence_buckets
    from futurelens_tl.models.view import as_view

    view = as_view(model)
    if label_source not in ("model_greedy", "corpus"):
        raise ValueError(f"label_source={label_source!r} must be 'model_greedy' or 'corpus'")
    ks = _check_ks(k, view.d_vocab)
    ns = [n_ahead] if isinstance(n_ahead, int) else list(n_ahead)
    if not ns or any(isinstance(n, bool) or not isinstance(n, int) or n < 0 for n in ns):
        raise ValueError(f"n_ahead={n_ahead!r} must be ints >= 0")
    items = _lens_list(lens_or_lenses)
    parts: list[LensEvaluation] = []
    plain = []
    for lens in items:
        if hasattr(lens, "_evaluate"):
            part = lens._evaluate(model, texts, n_ahead=tuple(ns), k=tuple(ks),
                                  label_source=label_source, verbose=verbose, **kwargs)
            _check_table_finite(part, f"lens {getattr(lens, 'name', '?')!r}")
            parts.append(part)
        else:
            lens.check_model(view)
            plain.append(lens)
    if kwargs and plain:
        raise TypeError(f"unexpected keyword arguments {sorted(kwargs)} for lenses "
                        f"{[x.name for x in plain]}")
    if plain:
        windows = _data.token_windows(view, texts, length=seq_len, max_windows=max_windows)
        T = windows.shape[1]
        if T < 2 + max(ns):
            raise ValueError(f"windows of {T} tokens are too short for n_ahead={max(ns)}")
        want = None if layers is None else set(view.layer_indices(layers))
        lens_layers = {x.name: [ly for ly in x.layers if want is None or ly in want]
                       for x in plain}
        all_layers = sorted({ly for v in lens_layers.values() for ly in v})
        if not all_layers:
            raise ValueError(f"layers={layers!r} selects no layer any lens covers")
        acc: dict[tuple, list[float]] = {}
        bucket_data: dict[tuple, list[Tensor]] = {}

        def add(key: tuple, total: float, count: int) -> None:
            a = acc.setdefault(key, [0.0, 0])
            a[0] += total
            a[1] += count

        base_labels: dict[int, list[Tensor]] = {n: [] for n in ns}
        base_prev: dict[int, list[Tensor]] = {n: [] for n in ns}
        for toks, logits, resid in _data.iter_batches(view, windows, layers=all_layers,
                                                      batch_size=batch_size, verbose=verbose,
                                                      desc="evaluate"):
            # one scratch buffer per batch, sized for the most rows (n = min(ns))
            scratch = scratch_for(logits.shape[0] * (T - 1 - min(ns)), view.d_vocab,
                                  logits.device)
            for n in ns:
                Tn = T - 1 - n  # positions t with a token t + 1 + n
                f = FinalDistribution.from_logits(
                    logits[:, n : n + Tn].reshape(-1, view.d_vocab))
                if not bool(torch.isfinite(f.log_normalizer).all()):
                    raise NonFiniteError(
                        "the model's own logits are NaN/inf on the evaluation windows, so every "
                        f"metric would be meaningless: {explain_nonfinite(view)}.")
                corpus = toks[:, 1 + n : 1 + n + Tn].reshape(-1)
                label = f.logits.argmax(-1) if label_source == "model_greedy" else corpus
                base_labels[n].append(label.cpu())
                base_prev[n].append(toks[:, n : n + Tn].reshape(-1).cpu())
                conf = f.probs.max(-1).values
                for lens in plain:
                    for layer in lens_layers[lens.name]:
                        h = resid[all_layers.index(layer)][:, :Tn].reshape(-1, view.d_model)
                        st = _score_rows(lens, layer, h, f, label, corpus, ks, scratch,
                                         view=view)
                        key = (lens.name, layer, n)
                        for name, val in st.items():
                            if not name.startswith("_"):
                                add(key + (name,), val[0], val[1])
                        if buckets is not None:
                            bucket_data.setdefault(key, []).append(
                                torch.stack([conf.cpu(), st["_hits1"].cpu()]))
        rows = []
        for (name, layer, n, metric), (tot, cnt) in acc.items():
            if metric.startswith("_"):
                continue
            kk = int(metric.split("@")[1]) if metric.startswith("precision@") else None
            lens = next(x for x in plain if x.name == name)
            rows.append(_row(lens=name, method=type(lens).__name__, layer=layer, n_ahead=n,
                             metric="precision" if kk else metric, k=kk, mode="same_position",
                             token_fed=bool(lens.token_fed), label_source=label_source,
                             value=tot / max(cnt, 1), n=cnt))
        for (name, layer, n), chunks in bucket_data.items():
            cd = torch.cat(chunks, dim=1)
            df = confidence_buckets(cd[0], cd[1], edges=buckets)  # type: ignore[arg-type]
            lens = next(x for x in plain if x.name == name)
            for _, b in df.iterrows():
                rows.append(_row(lens=name, method=type(lens).__name__, layer=layer,
                                 n_ahead=n, metric="precision", k=1, mode="same_position",
                                 token_fed=bool(lens.token_fed), label_source=label_source,
                                 bucket=b["bucket"], value=b["precision"], n=int(b["n"])))
        meta: dict[str, Any] = {
            "fingerprint": model_fingerprint(view), "basis": view.basis,
            "n_windows": int(windows.shape[0]), "seq_len": int(T),
            "label_source": label_source, "n_ahead": ns, "k": ks,
            "lenses": [x.name for x in plain],
            "buckets": None if buckets is None else list(buckets),
        }
        if baseline:
            src = windows if baseline_texts is None else _data.token_windows(
                view, baseline_texts, length=seq_len)
            bg = NgramBaseline(2, vocab_size=view.d_vocab).fit(src)
            meta["baseline"] = ("bigram fitted on the evaluation windows (in-sample)"
                                if baseline_texts is None else "bigram fitted on baseline_texts")
            for n in ns:
                labels = torch.cat(base_labels[n])
                prev = torch.cat(base_prev[n])
                lp = bg.predict_log_probs(prev)
                from futurelens_tl.metrics import precision_at_k

                prec = precision_at_k(lp, labels, ks)
                for kk, v in zip(ks, prec.tolist()):
                    rows.append(_row(lens="bigram", method="bigram", layer=None, n_ahead=n,
                                     metric="precision", k=kk, mode="baseline",
                                     token_fed=False, label_source=label_source, value=v,
                                     n=int(labels.numel())))
        part = LensEvaluation(pd.DataFrame(rows, columns=COLUMNS), meta)
        _check_table_finite(part, "evaluate")
        parts.append(part)
    if len(parts) == 1:
        return parts[0]
    return LensEvaluation.concat(parts)


def _score_rows(lens: Any, layer: int, h: Tensor, final: FinalDistribution, label: Tensor,
                corpus: Tensor, ks: list[int], scratch: Tensor | None = None, *,
                view: Any = None) -> dict[str, Any]:
    """``metric -> (sum, count)`` over rows, from one fused reduction (``lenses.reduction``).

    Raises:
        NonFiniteError: The readout is NaN/inf (a NaN row would otherwise rank every label
            first: precision@1 = 1.0 with NaN KL).
    """
    from futurelens_tl.lenses.base import NonFiniteError, explain_nonfinite

    # Column 0 (the label) is ranked for precision@k; column 1 (the corpus token) gives CE.
    st = reduce_readout(lens, layer, h, 1, final=final, scratch=scratch,
                        targets=torch.stack([label, corpus], dim=-1), ranks=1)
    if not bool(torch.isfinite(st["log_normalizer"]).all()):
        where = (f"the model's residual at layer {layer} is NaN/inf"
                 if not bool(torch.isfinite(h).all())
                 else f"lens {lens.name!r} produced NaN/inf logits at layer {layer}")
        detail = explain_nonfinite(view if view is not None else lens.view, [lens])
        raise NonFiniteError(f"{where}: {detail}.")
    n = h.shape[0]
    rank = st["target_ranks"][:, 0]
    out: dict[str, Any] = {f"precision@{kk}": (float((rank <= kk).sum()), n) for kk in ks}
    out["surprisal"] = (float(-final.log_prob(st["top_ids"][:, 0]).sum()), n)
    out["kl"] = (float(st["kl"].sum()), n)
    out["entropy"] = (float(st["entropy"].sum()), n)
    out["ce"] = (float(-st["target_log_probs"][:, 1].sum()), n)
    out["_hits1"] = (rank <= 1).float()
    return out
