"""Which class a modality's records and collections are: the user's, a plugin's, or ours.

sinagot 0.3's convention: `scripts/<modality>/models/record_collection.py` and
`record.py` may define the classes of that modality (named by `[modalities.X] models.record`
/ `record_collection`, else `RecordCollection` / `Record`, else the one subclass the file
defines); otherwise `models.plugin` names a plugin (`pandas`, `processed`). Each workspace
loads them once, for itself: nothing is shared between workspaces.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from ..errors import ConfigError

if TYPE_CHECKING:
    from ..config import Config
    from .records import Record, RecordCollection

FILES = {"record": "record.py", "record_collection": "record_collection.py"}


class ModelClasses:
    """The classes of one workspace's modalities, loaded on first use."""

    def __init__(self, config: Config) -> None:
        self._config = config
        self._found: dict[tuple[str, str | None], type] = {}

    def collection(self, modality: str | None) -> type[RecordCollection]:
        from .records import RecordCollection

        return self._class("record_collection", modality, RecordCollection)

    def record(self, modality: str | None) -> type[Record]:
        from .records import Record

        return self._class("record", modality, Record)

    def _class(self, kind: str, modality: str | None, base: type) -> type:
        key = (kind, modality)
        if key not in self._found:
            self._found[key] = self._resolve(kind, modality, base)
        return self._found[key]

    def _resolve(self, kind: str, modality: str | None, base: type) -> type:
        spec = self._config.modalities.get(modality) if modality else None
        if spec is None:
            return base
        path = self._config.scripts / modality / "models" / FILES[kind]
        wanted = getattr(spec.models, kind)
        if path.is_file():
            return _user_class(path, wanted, base)
        if wanted is not None:
            raise ConfigError(
                f"[modalities.{modality}] models.{kind} = {wanted!r}: {path} not found"
            )
        if spec.models.plugin is not None:
            from .plugins import plugin_class

            return plugin_class(spec.models.plugin, kind)
        return base


def _user_class(path: Path, wanted: str | None, base: type) -> type:
    module = _load(path)
    if wanted is not None:
        found = getattr(module, wanted, None)
        if not (isinstance(found, type) and issubclass(found, base)):
            raise ConfigError(f"{path}: no class {wanted!r} subclassing {base.__name__}")
        return found
    found = getattr(module, base.__name__, None)
    if isinstance(found, type) and issubclass(found, base) and found is not base:
        return found
    own = [
        v for v in vars(module).values()
        if isinstance(v, type) and issubclass(v, base) and v.__module__ == module.__name__
    ]  # fmt: skip
    if len(own) != 1:
        what = "no" if not own else "several"
        key = "record" if base.__name__ == "Record" else "record_collection"
        raise ConfigError(
            f"{path}: {what} class subclassing sinagot.models.{base.__name__}; "
            f"name the one to use in [modalities] models.{key}"
        )
    return own[0]


def _load(path: Path) -> ModuleType:
    """Execute a models file as a fresh module (registered, so that pickle finds it)."""
    name = f"sinagot_models_{abs(hash(str(path))):x}_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # the user's module raised while importing
        del sys.modules[name]
        raise ConfigError(f"{path}: importing it raised {exc!r}") from None
    return module
