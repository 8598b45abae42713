"""Sinagot: run per-record processing scripts over a file-system dataset, automatically."""

from importlib.metadata import PackageNotFoundError, version

from .errors import ConfigError, RecordIdError, ScriptError, SinagotError
from .scripts import ScriptTemplate
from .status import StepStatus
from .workspace import Workspace

try:
    __version__ = version("sinagot")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0+unknown"

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
