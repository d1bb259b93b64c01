"""The main job: one command that exercises every capability and writes an offline report.

``futurelens-tl report --model toy --out DIR`` (or :func:`build_report`) runs these stages, each
timed, with a progress bar over them:

1. ``model``   load (or train and cache) the model; its summary;
2. ``lenses``  train (cached) the tuned lens; evaluate it against the logit lens and the bigram
               baseline; the side-by-side grid for a few prompts (logit | tuned | future);
3. ``future``  cache Future Lens features once, train (cached) the learned prompt and the
               linear-hidden map, evaluate both teacher-forced and free-running (the paper's
               figure);
4. ``layer0``  the weight-only layer-0 decomposition: positional attention, T^pp heatmap, term
               contributions, detokenization AUROC per head and top prefixes;
5. ``heads``   head-role tagging: the layer x head grid and the full score table.

Every setting is validated by :meth:`ReportConfig.validate` **before** anything is loaded
(a missing ``texts`` file, an unknown role, ``out`` being a regular file, non-integer
``future_layers``, a zero budget: :class:`ReportUsageError`). The report is built in a hidden
staging folder beside ``out`` and moved into place only when complete, so a failed run leaves
no partial output folder.

Outputs in ``DIR``: ``index.html`` (every asset inlined, opens offline), ``figures/*.png``,
``tables/*.csv`` and ``tables/*.json``. Trained lenses **and the Future Lens features** are
cached under ``$FUTURELENS_CACHE/report/<model fingerprint>/`` (default: the user cache dir),
keyed by a sha256 of every setting they depend on (corpus, budgets, layers, seed), so a second
run with the same settings only evaluates.
"""

from futurelens_tl.report.build import build_report
from futurelens_tl.report.cache import load_features, save_features
from futurelens_tl.report.config import (
    DTYPES,
    STAGES,
    ReportConfig,
    ReportResult,
    ReportUsageError,
    parse_layers,
)
from futurelens_tl.report.page import _flat_columns, cache_root, tidy_figure  # noqa: F401 (tests)

__all__ = ["DTYPES", "STAGES", "ReportConfig", "ReportResult", "ReportUsageError",
           "build_report", "cache_root", "load_features", "parse_layers", "save_features",
           "tidy_figure"]
