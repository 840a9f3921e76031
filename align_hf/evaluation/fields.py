"""Reading evaluation rows: dotted field paths, caption lists and class labels.

Rows come from lists of dicts, ``datasets`` datasets or webdataset shards, so a field may be a
plain value, bytes (a ``.cls`` or ``.txt`` member) or sit inside a JSON sidecar.
"""

from __future__ import annotations

import json
import numbers
from typing import Any, Mapping

_MISSING = object()


def get_field(row: dict, column: str, default: Any = _MISSING) -> Any:
    """``row[column]``, where ``column`` may be a dotted path into nested dicts or JSON sidecars.

    ``"json.label_index"`` reads ``label_index`` from a webdataset ``.json`` field, whether it
    is still bytes, a string or already a dict.
    """
    if column in row:
        return row[column]
    value: Any = row
    for part in column.split("."):
        if isinstance(value, (bytes, bytearray, str)):
            try:
                value = json.loads(value)
            except ValueError:
                value = None
        if not isinstance(value, dict) or part not in value:
            if default is _MISSING:
                raise KeyError(f"no field {column!r} in row with fields {sorted(row)}")
            return default
        value = value[part]
    return value


def read_captions(value: Any) -> list[str]:
    """The non-blank captions in a field holding one caption (str or UTF-8 bytes) or a list of them."""
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    captions = [value] if isinstance(value, str) else list(value or [])
    return [c.strip() for c in captions if isinstance(c, str) and c.strip()]


def read_label(value: Any, index_of: Mapping[str, int], num_classes: int) -> int | None:
    """The class index in a label field, or None when it is missing or not one of the classes.

    Args:
        value: a class index (int, or digits as text or bytes, such as a webdataset ``.cls``)
            or a class name.
        index_of: class name -> class index.
        num_classes: indices must lie in ``[0, num_classes)``.
    """
    if isinstance(value, (bytes, bytearray)):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        text = value.strip()
        value = index_of.get(text, int(text) if text.isdigit() else None)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= value < num_classes:
        return None
    return int(value)


__all__ = ["get_field", "read_captions", "read_label"]
