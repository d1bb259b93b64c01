r"""Progress bars: one helper, silent in logs, with a global quiet switch (a leaf module).

:func:`progress` wraps an iterable in a tqdm bar that is shown only when

* the caller asked for it (``verbose=True``),
* nothing switched progress off globally (:func:`set_quiet`, the CLI's ``--quiet``, or the
  environment variable ``FUTURELENS_NO_PROGRESS=1``), and
* someone can watch it: stderr is a terminal, or the code runs in a Jupyter kernel.

So CI logs and redirected output never fill with ``\r`` and escape codes. In Jupyter the bar is
a widget when ``ipywidgets`` is installed and a plain text bar otherwise (never the
``IProgress not found`` warning of ``tqdm.auto``).

:func:`hf_progress` does the same for the Hugging Face bars (the transformers "Loading weights"
bar) around a model load.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["hf_progress", "is_quiet", "progress", "set_quiet", "show_progress"]

_QUIET = False

# tqdm.auto (imported by transformers / TransformerLens) warns in every notebook without
# ipywidgets; the bars fall back to text, so the warning is noise.
warnings.filterwarnings("ignore", message="IProgress not found")


def set_quiet(quiet: bool = True) -> None:
    """Switch every progress bar of the package off (``True``) or back on (``False``).

    Also switches transformers' bars ("Loading weights") off when quiet, if transformers is
    imported; ``fl.load_model(..., verbose=False)`` keeps them off during a load.

    Examples:
        >>> set_quiet(True); is_quiet()
        True
        >>> set_quiet(False)  # back to each call's ``verbose`` (and the environment)
    """
    global _QUIET
    _QUIET = bool(quiet)
    if _QUIET:  # (no HF_HUB_DISABLE_PROGRESS_BARS: loaders that re-enable bars would warn)
        _set_hf_bars(False)


def is_quiet() -> bool:
    """Whether progress is off globally (:func:`set_quiet` or ``FUTURELENS_NO_PROGRESS=1``)."""
    return _QUIET or os.environ.get("FUTURELENS_NO_PROGRESS", "") not in ("", "0")


def _in_notebook() -> bool:
    if "ipykernel" not in sys.modules:
        return False
    try:
        from IPython import get_ipython

        ip = get_ipython()
    except Exception:  # pragma: no cover - IPython broken or absent
        return False
    return ip is not None and "IPKernelApp" in getattr(ip, "config", {})


def _stderr_is_tty() -> bool:
    try:
        return bool(sys.stderr.isatty())
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def show_progress(verbose: bool = True) -> bool:
    """Whether :func:`progress` would draw a bar now.

    Examples:
        >>> show_progress(verbose=False)
        False
    """
    return bool(verbose) and not is_quiet() and (_stderr_is_tty() or _in_notebook())


def _tqdm_class() -> Any:
    if _in_notebook():
        try:
            import ipywidgets  # noqa: F401
            from tqdm.notebook import tqdm as tqdm_nb

            return tqdm_nb
        except ImportError:
            pass
    from tqdm.std import tqdm as tqdm_std

    return tqdm_std


def progress(iterable: Iterable[Any], *, verbose: bool = True, **kwargs: Any) -> Any:
    """A tqdm bar over ``iterable`` when :func:`show_progress` says so, else a silent one.

    The silent bar is a disabled tqdm (same methods: ``set_postfix_str``, ``update``...), so
    callers never branch.

    Args:
        iterable: What to iterate over.
        verbose: The caller's switch (``verbose=False`` in every public function).
        **kwargs: Passed to tqdm (``desc``, ``total``, ...).

    Examples:
        >>> list(progress(range(3), verbose=False, desc="x"))
        [0, 1, 2]
    """
    kwargs.setdefault("leave", False)
    kwargs.setdefault("dynamic_ncols", True)
    return _tqdm_class()(iterable, disable=not show_progress(verbose), **kwargs)


def _set_hf_bars(enabled: bool) -> bool | None:
    """Set transformers' progress bars if transformers is imported; return the old state."""
    mod = sys.modules.get("transformers.utils.logging")
    if mod is None:
        return None
    old = bool(mod.is_progress_bar_enabled())
    (mod.enable_progress_bar if enabled else mod.disable_progress_bar)()
    return old


@contextmanager
def hf_progress(verbose: bool = True) -> Iterator[None]:
    """Show the Hugging Face / transformers bars inside the block only if :func:`show_progress`.

    Use it around ``from_pretrained`` calls: ``with hf_progress(verbose): model = ...``.

    Examples:
        >>> with hf_progress(verbose=False):
        ...     pass
    """
    want = show_progress(verbose)
    if not want:
        import transformers.utils.logging  # noqa: F401  (so the switch below takes effect)
    old = _set_hf_bars(want)
    try:
        yield
    finally:
        if old is not None:
            _set_hf_bars(old)
