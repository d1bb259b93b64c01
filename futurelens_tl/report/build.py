"""Run the stages in order into a staging folder and publish it whole (:func:`build_report`)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from futurelens_tl._io import dir_mode
from futurelens_tl.progress import progress
from futurelens_tl.report.config import ReportConfig, ReportResult
from futurelens_tl.report.page import _Report, _timings_frame
from futurelens_tl.report.stages import (
    _stage_future,
    _stage_grid,
    _stage_heads,
    _stage_layer0,
    _stage_lenses,
    _stage_model,
)


def _publish(staging: Path, out: Path) -> None:
    """Move the finished report from ``staging`` into ``out`` (file by file if ``out`` exists)."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(staging, out)
        return
    for src in sorted(staging.rglob("*")):
        if src.is_file():
            dst = out / src.relative_to(staging)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
    shutil.rmtree(staging, ignore_errors=True)


def build_report(cfg: ReportConfig) -> ReportResult:
    """Validate ``cfg``, run the stages of the module docstring, write ``cfg.out/index.html``.

    Raises:
        ReportUsageError: On an invalid setting, before anything is loaded or written.

    Examples:
        >>> import tempfile
        >>> from futurelens_tl.report import ReportConfig, build_report
        >>> res = build_report(ReportConfig(out=Path(tempfile.mkdtemp()) / "r", stages=["layer0"],
        ...                                 verbose=False))  # doctest: +SKIP
    """
    parsed = cfg.validate()
    stages = parsed["stages"]
    out = Path(cfg.out).expanduser()
    anc = out.parent
    while not anc.exists():
        anc = anc.parent
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=anc))
    os.chmod(staging, dir_mode())  # mkdtemp makes it 0700; the published folder is normal
    try:
        torch.manual_seed(cfg.seed)
        rep = _Report(cfg, staging)
        state: dict[str, Any] = {"parsed": parsed}
        bar = progress(["model", *stages], verbose=cfg.verbose, desc="report")
        for name in bar:
            bar.set_postfix_str(name)
            with rep.stage(name):
                {"model": _stage_model, "lenses": _stage_lenses, "future": _stage_future,
                 "layer0": _stage_layer0, "heads": _stage_heads}[name](rep, state)
        if "lenses" in stages:  # the grid needs every lens, so it is drawn once all are trained
            with rep.stage("grid"):
                _stage_grid(rep, state)
        rep.add("Stage timings", rep.table(_timings_frame(rep.timings, rep.cpu), "timings"),
                note="Cached lenses and features: " + (", ".join(rep.cache_hits) or "none")
                     + ".")
        from futurelens_tl.viz.report import write_report

        view = state["view"]
        write_report(
            rep.out / "index.html", f"futurelens_tl report: {state['model_name']}",
            rep.sections,
            subtitle="Lenses side by side, the Future Lens, layer-0 attention from weights, "
                     "head roles.",
            meta={"model": state["model_name"], "fingerprint": view.fingerprint,
                  "basis": view.basis, "generated": time.strftime("%Y-%m-%d %H:%M")},
        )
        rep.json({**rep.timings, **rep.substeps,
                  **{f"{k} (cpu s)": v for k, v in rep.cpu.items()}}, "timings")
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    files = [out / p.relative_to(staging) for p in rep.files]
    return ReportResult(index=out / "index.html", timings=rep.timings, files=files,
                        cache_hits=rep.cache_hits, cpu=rep.cpu)
