"""Sinagot: run per-record processing scripts over a file-system dataset, automatically."""

from ._version import __version__
from .errors import ConfigError, RecordIdError, ScriptError, SinagotError
from .scripts import ScriptTemplate
from .status import StepStatus

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .workspace import Workspace

__all__ = [
    "ConfigError",
    "RecordIdError",
    "ScriptError",
    "ScriptTemplate",
    "SinagotError",
    "StepStatus",
    "Workspace",
    "__version__",
]


def __getattr__(name: str) -> object:
    """`Workspace` (sinagot 0.3's object API) is imported on first use: the command line
    and the daemon never need it, and `sinagot status` starts faster without it."""
    if name == "Workspace":
        from .workspace import Workspace

        return Workspace
    raise AttributeError(f"module 'sinagot' has no attribute {name!r}")
