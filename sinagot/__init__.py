"""Sinagot: run per-record processing scripts over a file-system dataset, automatically."""

from ._version import __version__
from .errors import ConfigError, RecordIdError, ScriptError, SinagotError
from .scripts import ScriptTemplate
from .status import StepStatus
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
