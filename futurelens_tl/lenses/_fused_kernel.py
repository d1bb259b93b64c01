"""A small C kernel that reduces one tile of logits in two passes per row (built on first use).

The fused readout (:func:`futurelens_tl.lenses.reduction.fused_unembed_stats`) makes one
``[rows, vocab_chunk]`` tile of logits at a time with the unembedding matmul. Reading that tile
with separate torch ops (max, ``exp``, three row sums, a compare) costs about half the matmul
again on a CPU; this kernel does it in two passes over each row while the row is in L1:

* pass 1: the tile maximum and the maxima of 256 column groups (``j mod 256``), which prune the
  running top-k search to the few groups that can still enter it;
* re-base of the running softmax maximum when the tile exceeds it by more than 64 nats;
* pass 2: ``exp(z - m)`` (a vectorisable Cephes polynomial, about 1 ulp), ``sum e``,
  ``sum e (z - m)``, ``sum p_final (z - m)``, ``sum p_final`` and the rank count
  ``#{v: z_v > z_target}`` (strict; the target's own column is not counted).

It is compiled once per machine with the system C compiler (``cc``, override with ``CC``) into
``$FUTURELENS_CACHE`` (default ``~/.cache/futurelens_tl``); without a compiler, on non-CPU
tensors, or with ``FUTURELENS_NO_NATIVE=1`` the reduction falls back to torch ops (same
results, slower). Nothing here needs the network.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

__all__ = ["GROUPS", "kernel", "tile"]

#: Column groups of the top-k pruning (must match the kernel's ``G`` argument).
GROUPS = 256

_SOURCE = r"""
#include <math.h>
#include <stdint.h>
#include <stddef.h>
#define REBASE 64.0f

/* exp(x) for x <= 88, about 1 ulp (Cephes expf: Cody-Waite reduction + degree-6 polynomial);
   written out so the compiler vectorises it (glibc's expf is a scalar call). 0 below -87. */
static inline float fl_expf(float x) {
    float xc = x < -87.0f ? -87.0f : x;
    float fi = __builtin_roundf(xc * 1.44269504088896341f);
    float r = xc - fi * 0.693359375f + fi * 2.12194440e-4f;
    float p = 1.9875691500E-4f;
    p = p * r + 1.3981999507E-3f;
    p = p * r + 8.3334519073E-3f;
    p = p * r + 4.1665795894E-2f;
    p = p * r + 1.6666665459E-1f;
    p = p * r + 5.0000001201E-1f;
    p = p * r * r + r + 1.0f;
    union { int32_t i; float f; } u;
    u.i = ((int32_t)fi + 127) << 23;
    return x < -87.0f ? 0.0f : p * u.f;
}

static inline int better(float v1, int64_t i1, float v2, int64_t i2) {
    return v1 > v2 || (v1 == v2 && i1 < i2);
}

/* One tile of logits z [n, w] (row stride ldz), columns v0..v0+w of the vocabulary. */
void fl_tile(int64_t n, int64_t w, int64_t v0, const float* z, int64_t ldz,
             const float* pf, int64_t ldp,
             int64_t nt, int64_t nr, const float* zt, const int64_t* tgt,
             int64_t k, int64_t G, float* gm_all,
             float* m, double* s0, double* s1, double* skl, double* psum, double* cnt,
             float* zself, float* topv, int64_t* topi, int nthreads)
{
    #pragma omp parallel for num_threads(nthreads) schedule(static)
    for (int64_t r = 0; r < n; r++) {
        const float* zr = z + r * ldz;
        float* gm = gm_all + r * G;
        int64_t s = w / G, tail = w - s * G;
        float mx = -INFINITY;
        /* pass 1: group maxima (groups j mod G) and the tile maximum */
        if (s > 0) {
            for (int64_t j = 0; j < G; j++) gm[j] = zr[j];
            for (int64_t b = 1; b < s; b++) {
                const float* zb = zr + b * G;
                #pragma omp simd
                for (int64_t j = 0; j < G; j++) gm[j] = zb[j] > gm[j] ? zb[j] : gm[j];
            }
            #pragma omp simd reduction(max:mx)
            for (int64_t j = 0; j < G; j++) mx = gm[j] > mx ? gm[j] : mx;
        }
        for (int64_t j = s * G; j < w; j++) mx = zr[j] > mx ? zr[j] : mx;
        /* re-base the running maximum if this tile is far above it (or on the first tile) */
        float mr = m[r];
        if (mx > mr + REBASE || (isinf(mr) && mr < 0)) {
            if (!(isinf(mr) && mr < 0)) {
                double dd = (double)mr - (double)mx, f = exp(dd);
                s1[r] = f * (s1[r] + s0[r] * dd);
                s0[r] = f * s0[r];
                skl[r] += dd * psum[r];
            } else { s0[r] = 0; s1[r] = 0; skl[r] = 0; }
            mr = mx; m[r] = mx;
        }
        /* top-k: scan only groups whose maximum can enter the running top-k */
        float* tv = topv + r * k; int64_t* ti = topi + r * k;
        for (int64_t j = 0; j < G + tail; j++) {
            int64_t first, step, cntg;
            if (j < G) {
                /* a group whose maximum cannot enter the top-k holds no entrant */
                if (s == 0 || !better(gm[j], -1, tv[k-1], ti[k-1])) continue;
                first = j; step = G; cntg = s;
            } else { first = s * G + (j - G); step = 1; cntg = 1; }
            for (int64_t b = 0; b < cntg; b++) {
                int64_t c = first + b * step; float v = zr[c]; int64_t id = v0 + c;
                if (!better(v, id, tv[k-1], ti[k-1])) continue;
                int64_t p = k - 1;
                while (p > 0 && better(v, id, tv[p-1], ti[p-1])) {
                    tv[p] = tv[p-1]; ti[p] = ti[p-1]; p--;
                }
                tv[p] = v; ti[p] = id;
            }
        }
        /* pass 2: exp, sums, KL row-dot, rank counts */
        float a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        if (pf) {
            const float* pr = pf + r * ldp;
            #pragma omp simd reduction(+:a0,a1,a2,a3)
            for (int64_t j = 0; j < w; j++) {
                float zs = zr[j] - mr, e = fl_expf(zs);
                a0 += e; a1 += e * zs; a2 += pr[j] * zs; a3 += pr[j];
            }
        } else {
            #pragma omp simd reduction(+:a0,a1)
            for (int64_t j = 0; j < w; j++) {
                float zs = zr[j] - mr, e = fl_expf(zs);
                a0 += e; a1 += e * zs;
            }
        }
        s0[r] += a0; s1[r] += a1; skl[r] += a2; psum[r] += a3;
        for (int64_t q = 0; q < nt; q++) {
            int64_t t = tgt[r * nt + q];
            int64_t c = t - v0;
            int inside = t >= 0 && c >= 0 && c < w;
            if (inside) zself[r * nt + q] = zr[c];
            if (q < nr && t >= 0) {
                float th = zt[r * nt + q]; float cc = 0;
                #pragma omp simd reduction(+:cc)
                for (int64_t j = 0; j < w; j++) cc += zr[j] > th ? 1.0f : 0.0f;
                if (inside && zr[c] > th) cc -= 1.0f;
                cnt[r * nr + q] += cc;
            }
        }
    }
}
"""

_FLAGS = ["-O3", "-march=native", "-mprefer-vector-width=512", "-ffast-math",
          "-fno-finite-math-only", "-fopenmp", "-shared", "-fPIC"]
_lock = threading.Lock()
_state: dict[str, object] = {}


def _cpu_key() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:  # pragma: no cover - non-Linux
        flags = ""
    return flags


def _build() -> ctypes.CDLL | None:
    if os.environ.get("FUTURELENS_NO_NATIVE"):
        return None
    cc = os.environ.get("CC", "cc")
    key = hashlib.sha256("\0".join([_SOURCE, cc, *_FLAGS, _cpu_key()]).encode()).hexdigest()[:16]
    root = Path(os.environ.get("FUTURELENS_CACHE", Path.home() / ".cache" / "futurelens_tl"))
    so = root / "kernels" / f"fused_tile_{key}.so"
    if not so.exists():
        try:
            so.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=so.parent) as tmp:
                c = Path(tmp) / "k.c"
                c.write_text(_SOURCE)
                out = Path(tmp) / "k.so"
                subprocess.run([cc, *_FLAGS, str(c), "-o", str(out), "-lm"], check=True,
                               capture_output=True, timeout=120)
                os.replace(out, so)  # atomic: concurrent builders agree on one file
        except (OSError, subprocess.SubprocessError):
            return None
    try:
        lib = ctypes.CDLL(str(so))
    except OSError:
        return None
    P, In = ctypes.c_void_p, ctypes.c_int64
    lib.fl_tile.argtypes = [In, In, In, P, In, P, In, In, In, P, P, In, In, P,
                            P, P, P, P, P, P, P, P, P, ctypes.c_int]
    lib.fl_tile.restype = None
    return lib


def kernel() -> ctypes.CDLL | None:
    """The compiled kernel, or ``None`` when it cannot be built here (then torch ops are used)."""
    with _lock:
        if "lib" not in _state:
            _state["lib"] = _build()
        return _state["lib"]  # type: ignore[return-value]


def _p(t: Tensor | None, offset: int = 0) -> int | None:
    return None if t is None else t.data_ptr() + offset * t.element_size()


def tile(lib: ctypes.CDLL, z: Tensor, v0: int, pf: Tensor | None, zt: Tensor | None,
         tgt: Tensor | None, n_rank: int, gm: Tensor, m: Tensor, s0: Tensor, s1: Tensor,
         skl: Tensor, psum: Tensor, cnt: Tensor | None, zself: Tensor | None, topv: Tensor,
         topi: Tensor) -> None:
    """Fold one tile ``z`` (``[n, w]``, unit column stride; columns ``v0..v0+w``) into the state.

    ``pf`` is the final distribution's ``[n, >= v0 + w]`` probabilities (or ``None``); ``zt`` /
    ``tgt`` the ``[n, nt]`` target logits and ids (``-1`` = none); state tensors are updated in
    place (``m`` float32; ``s0, s1, skl, psum, cnt`` float64; ``topv/topi`` ``[n, k]`` sorted).
    """
    n, w = z.shape
    nt = 0 if tgt is None else tgt.shape[1]
    lib.fl_tile(n, w, v0, _p(z), z.stride(0), _p(pf, v0), 0 if pf is None else pf.stride(0),
                nt, n_rank, _p(zt), _p(tgt), topv.shape[1], GROUPS, _p(gm),
                _p(m), _p(s0), _p(s1), _p(skl), _p(psum), _p(cnt), _p(zself), _p(topv), _p(topi),
                torch.get_num_threads())
