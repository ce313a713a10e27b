"""ftnb: fine-tune chat language models from a notebook, and watch what they forget."""
__version__ = "0.1.0"

from .core import *  # noqa: F401,F403
from .core import __all__ as _core_all
from .core.data import bundled


def Studio(*args, **kwargs):
    """All panels in tabs (needs the `ftnb[notebook]` extra)."""
    from .panels.studio import Studio as _Studio
    return _Studio(*args, **kwargs)


__all__ = ["__version__", "Studio", "bundled", *_core_all]
