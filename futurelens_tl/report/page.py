"""The report page under construction (:class:`_Report`) and its table/figure helpers."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from futurelens_tl._io import atomic_write, write_text
from futurelens_tl.report.config import ReportConfig


def cache_root() -> Path:
    """``$FUTURELENS_CACHE`` or the user cache folder (:func:`futurelens_tl.paths.cache_root`)."""
    from futurelens_tl.paths import cache_root as root

    return root()


_cache_root = cache_root  # old private name


def _round_frame(df: Any, digits: int = 3) -> Any:
    """Round float columns (3 significant decimals) for display."""
    import pandas as pd

    out = df.copy()
    for c in out.columns:
        if pd.api.types.is_float_dtype(out[c]):
            out[c] = out[c].round(digits)
    return out


def _flat_columns(df: Any, *, prefix: str | None = None) -> Any:
    """A pivot table for display: index back as a labelled column, column labels named.

    ``prefix`` names the pivoted values (``"N="`` turns columns ``0, 1`` into ``N=0, N=1``).
    """
    df = df.copy()
    if df.columns.nlevels > 1:
        df.columns = [" ".join(str(x) for x in c if str(x) != "") for c in df.columns]
    else:
        df.columns = [f"{prefix}{c}" if prefix else str(c) for c in df.columns]
    df.columns.name = None
    return df.reset_index()


def tidy_figure(fig: Any) -> Any:
    """Report style for every figure: integer layer ticks, readable legends.

    A layer axis (``xlabel`` starting with ``layer``/``block``) gets integer ticks; its
    ``-1 = embed`` label is kept only when a point sits at ``x = -1``.
    """
    from matplotlib.ticker import MaxNLocator

    for ax in fig.axes:
        label = ax.get_xlabel()
        if label.lower().startswith(("layer", "block", "source layer")):
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            xs = [x for line in ax.get_lines() for x in line.get_xdata()
                  if len(line.get_xdata()) > 1]
            if "embed" in label and not any(float(x) < 0 for x in xs):
                ax.set_xlabel(re.sub(r"\s*\(-1 = embed\)", "", label))
        leg = ax.get_legend()
        if leg is not None:
            leg.set_frame_on(True)
            leg.get_frame().set_alpha(0.9)
            for t in leg.get_texts():
                t.set_fontsize(8)
    return fig


class _Report:
    def __init__(self, cfg: ReportConfig, staging: Path):
        from futurelens_tl.viz.report import Section

        self.cfg = cfg
        self.out = staging
        (self.out / "figures").mkdir(parents=True, exist_ok=True)
        (self.out / "tables").mkdir(parents=True, exist_ok=True)
        self.sections: list[Section] = []
        self.Section = Section
        self.timings: dict[str, float] = {}
        self.files: list[Path] = []
        self.cache_hits: list[str] = []
        self.substeps: dict[str, float] = {}  # finer timings inside a stage (seconds)
        self.cpu: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        self.timings[name] = time.perf_counter() - t0
        self.cpu[name] = time.process_time() - c0  # CPU seconds: comparable across loads

    def figure(self, fig: Any, name: str, alt: str, *, inline: bool = True) -> str:
        """Save ``fig`` as PNG beside the report; return it inlined (base64) if ``inline``."""
        import matplotlib.pyplot as plt

        from futurelens_tl.viz.figures import save_figure
        from futurelens_tl.viz.html import figure_html

        tidy_figure(fig)
        path = self.out / "figures" / f"{name}.png"
        save_figure(fig, path)
        self.files.append(path)
        html = figure_html(fig, alt=alt) if inline else ""
        plt.close(fig)
        return html

    def table(self, df: Any, name: str, *, max_rows: int = 30, caption: str | None = None) -> str:
        from futurelens_tl.viz.html import dataframe_html

        path = self.out / "tables" / f"{name}.csv"
        atomic_write(path, lambda tmp: df.to_csv(tmp, index=False))
        self.files.append(path)
        if max_rows < 1:
            return ""
        return dataframe_html(_round_frame(df).head(max_rows), caption=caption,
                              float_format="{:.3g}")

    def json(self, obj: Any, name: str) -> None:
        path = self.out / "tables" / f"{name}.json"
        write_text(path, json.dumps(obj, indent=2, default=str))
        self.files.append(path)

    def add(self, title: str, html: str, *, level: int = 2, note: str | None = None) -> None:
        self.sections.append(self.Section(title, html, level=level, note=note))


def _timings_frame(timings: dict[str, float], cpu: dict[str, float] | None = None) -> Any:
    import pandas as pd

    cpu = cpu or {}
    df = pd.DataFrame({"stage": [*timings, "total"],
                       "seconds": [round(v, 1) for v in timings.values()]
                       + [round(sum(timings.values()), 1)],
                       "cpu_seconds": [round(cpu.get(k, float("nan")), 1) for k in timings]
                       + [round(sum(cpu.values()), 1)]})
    return df
