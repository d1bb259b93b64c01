"""Sparse bigram counts ``c(u, s)`` keyed by suffix, the labels of the AUROC (ref §8, §11)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

from futurelens_tl.progress import progress


@dataclass
class BigramCounts:
    """Sparse bigram counts ``c(u, s)``: prefix ``u`` immediately followed by suffix ``s``.

    Stored as CSR keyed by the suffix (rows = suffix, columns = prefix), which is what the
    AUROC of ref §8 streams over. Build it with :func:`count_bigrams` or
    :meth:`from_dense`.

    Attributes:
        vocab_size: ``|V|``.
        indptr: ``[|V| + 1]`` int64 row pointers over suffixes.
        prefix: ``[nnz]`` int64 prefix ids, ascending within each suffix row.
        count: ``[nnz]`` int64 counts (all > 0).
    """

    vocab_size: int
    indptr: np.ndarray
    prefix: np.ndarray
    count: np.ndarray

    @classmethod
    def from_pairs(
        cls, prefix: npt.ArrayLike, suffix: npt.ArrayLike, count: npt.ArrayLike, vocab_size: int
    ) -> BigramCounts:
        """Build from parallel arrays (duplicate pairs are summed, zero counts dropped)."""
        prefix = np.asarray(prefix, dtype=np.int64)
        suffix = np.asarray(suffix, dtype=np.int64)
        count = np.asarray(count, dtype=np.int64)
        if prefix.size and (min(prefix.min(), suffix.min()) < 0
                            or max(prefix.max(), suffix.max()) >= vocab_size):
            raise ValueError(
                f"bigram token ids must lie in 0..{vocab_size - 1} (vocab_size={vocab_size})"
            )
        if (count < 0).any():
            raise ValueError("bigram counts must be non-negative")
        key = suffix * vocab_size + prefix
        uniq, inv = np.unique(key, return_inverse=True)
        summed = np.bincount(inv, weights=count, minlength=uniq.size).astype(np.int64)
        keep = summed > 0
        uniq, summed = uniq[keep], summed[keep]
        suf, pre = uniq // vocab_size, uniq % vocab_size
        indptr = np.zeros(vocab_size + 1, dtype=np.int64)
        np.add.at(indptr, suf + 1, 1)
        return cls(vocab_size, np.cumsum(indptr), pre, summed)

    @classmethod
    def from_dense(cls, counts: Tensor | np.ndarray) -> BigramCounts:
        """From a dense ``[|V|, |V|]`` matrix indexed ``counts[prefix, suffix]``."""
        arr = counts.detach().cpu().numpy() if isinstance(counts, Tensor) else np.asarray(counts)
        if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
            raise ValueError(f"bigram_counts must be square [|V|, |V|], got shape {arr.shape}")
        u, s = np.nonzero(arr)
        return cls.from_pairs(u, s, arr[u, s].astype(np.int64), arr.shape[0])

    @property
    def nnz(self) -> int:
        return int(self.count.size)

    def suffix_totals(self) -> np.ndarray:
        """Number of occurrences of each token as a suffix, ``sum_u c(u, s)``."""
        rows = np.repeat(np.arange(self.vocab_size), np.diff(self.indptr))
        return np.bincount(rows, weights=self.count, minlength=self.vocab_size).astype(np.int64)

    def dense_rows(self, start: int, stop: int, dtype: torch.dtype = torch.float64) -> Tensor:
        """Counts for suffixes ``start..stop-1`` as a dense ``[stop-start, |V|]`` tensor."""
        a, b = int(self.indptr[start]), int(self.indptr[stop])
        out = torch.zeros(stop - start, self.vocab_size, dtype=dtype)
        rows = np.repeat(np.arange(stop - start), np.diff(self.indptr[start:stop + 1]))
        out[torch.from_numpy(rows), torch.from_numpy(self.prefix[a:b])] = torch.from_numpy(
            self.count[a:b]
        ).to(dtype)
        return out

    def get(self, prefix: int, suffix: int) -> int:
        """Count of the pair (``prefix``, ``suffix``)."""
        a, b = int(self.indptr[suffix]), int(self.indptr[suffix + 1])
        k = np.searchsorted(self.prefix[a:b], prefix)
        return int(self.count[a + k]) if k < b - a and self.prefix[a + k] == prefix else 0


def count_bigrams(
    token_sequences: Iterable[Sequence[int] | Tensor | np.ndarray],
    vocab_size: int,
    *,
    verbose: bool = True,
) -> BigramCounts:
    """Count adjacent token pairs within each sequence (ref §8: documents counted separately).

    Args:
        token_sequences: Iterable of 1-D token-id sequences (lists, numpy arrays or tensors);
            a 2-D tensor is read row by row. Pairs never cross sequence boundaries.
        vocab_size: ``|V|``; every id must lie in ``0..vocab_size-1``.
        verbose: Progress bar.

    Returns:
        :class:`BigramCounts` with ``c(u, s)`` = number of times ``u`` is directly followed by
        ``s``.

    Raises:
        ValueError: On ids outside the vocabulary or a non-positive ``vocab_size``.

    Examples:
        >>> from futurelens_tl.attention.layer0 import count_bigrams
        >>> c = count_bigrams([[1, 2, 1, 2], [2, 1]], vocab_size=4)
        >>> c.get(1, 2), c.get(2, 1)
        (2, 2)
    """
    if not isinstance(vocab_size, int) or vocab_size <= 0:
        raise ValueError(f"vocab_size={vocab_size!r} must be a positive int")
    if isinstance(token_sequences, Tensor) and token_sequences.ndim == 2:
        token_sequences = list(token_sequences)
    keys: list[np.ndarray] = []
    pending = 0
    acc_k = np.zeros(0, dtype=np.int64)
    acc_c = np.zeros(0, dtype=np.int64)
    for seq in progress(token_sequences, verbose=verbose, desc="bigrams"):
        arr = (seq.detach().cpu().numpy() if isinstance(seq, Tensor) else np.asarray(seq))
        arr = arr.astype(np.int64).reshape(-1)
        if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
            raise ValueError(
                f"token_sequences holds ids outside the vocabulary 0..{vocab_size - 1} "
                f"(min {arr.min()}, max {arr.max()})"
            )
        if arr.size < 2:
            continue
        keys.append(arr[1:] * vocab_size + arr[:-1])  # suffix-major key
        pending += arr.size - 1
        if pending > 5_000_000:
            acc_k, acc_c = _merge_keys(acc_k, acc_c, keys)
            keys, pending = [], 0
    acc_k, acc_c = _merge_keys(acc_k, acc_c, keys)
    return BigramCounts.from_pairs(acc_k % vocab_size, acc_k // vocab_size, acc_c, vocab_size)


def _merge_keys(
    acc_k: np.ndarray, acc_c: np.ndarray, keys: list[np.ndarray]
) -> tuple[np.ndarray, np.ndarray]:
    if not keys:
        return acc_k, acc_c
    new = np.concatenate(keys)
    k = np.concatenate([acc_k, new])
    c = np.concatenate([acc_c, np.ones(new.size, dtype=np.int64)])
    uniq, inv = np.unique(k, return_inverse=True)
    return uniq, np.bincount(inv, weights=c, minlength=uniq.size).astype(np.int64)


def _as_bigram_counts(bigram_counts: Any, vocab_size: int) -> BigramCounts:
    if isinstance(bigram_counts, BigramCounts):
        bc = bigram_counts
    elif isinstance(bigram_counts, Tensor) and bigram_counts.is_sparse:
        t = bigram_counts.coalesce()
        idx = t.indices().cpu().numpy()
        bc = BigramCounts.from_pairs(idx[0], idx[1], t.values().cpu().numpy(), t.shape[0])
    elif isinstance(bigram_counts, Tensor) and bigram_counts.layout == torch.sparse_csr:
        return _as_bigram_counts(bigram_counts.to_sparse_coo(), vocab_size)
    elif isinstance(bigram_counts, dict):
        if bigram_counts:
            pairs = np.array(list(bigram_counts.keys()), dtype=np.int64)
            vals = np.array(list(bigram_counts.values()), dtype=np.int64)
        else:
            pairs, vals = np.zeros((0, 2), dtype=np.int64), np.zeros(0, dtype=np.int64)
        bc = BigramCounts.from_pairs(pairs[:, 0], pairs[:, 1], vals, vocab_size)
    elif isinstance(bigram_counts, (Tensor, np.ndarray)):
        bc = BigramCounts.from_dense(bigram_counts)
    else:
        raise TypeError(
            "bigram_counts must be BigramCounts (see count_bigrams), a dense or sparse "
            f"[|V|, |V|] tensor indexed [prefix, suffix], or a dict {{(prefix, suffix): count}}; "
            f"got {type(bigram_counts).__name__}"
        )
    if bc.vocab_size != vocab_size:
        raise ValueError(
            f"bigram_counts has vocab_size {bc.vocab_size} but the model has d_vocab {vocab_size}"
        )
    return bc

