"""Compatibility path: the adapter and loader now live in :mod:`futurelens_tl.models`.

``from futurelens_tl.model import ModelView, as_view, load_model`` keeps working.
"""

from futurelens_tl.models import *  # noqa: F403
from futurelens_tl.models import __all__  # noqa: F401
from futurelens_tl.models._tl import tl_major as _tl_major  # noqa: F401  (older call sites)
