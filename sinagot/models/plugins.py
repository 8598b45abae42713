"""0.3's model plugins, named by `[modalities.X] models.plugin`."""

from __future__ import annotations


def plugin_class(name: str, kind: str) -> type:
    """The class plugin `name` gives a modality's `kind` ("record" or "record_collection")."""
    if name == "pandas":
        from .pandas import PandasRecord, PandasRecordCollection

        return PandasRecord if kind == "record" else PandasRecordCollection
    from .processed import ProcessedRecord, ProcessedRecordCollection

    return ProcessedRecord if kind == "record" else ProcessedRecordCollection
