"""Protobuf text format for Triton's config.pbtxt, from plain Python values: dicts are messages,
lists of dicts repeated messages, :class:`Enum` values written bare. Small and exact; the configs it
writes are parsed back with Triton's own ``model_config_pb2`` in the tests."""

from __future__ import annotations

import json
from typing import Any


class Enum(str):
    """A protobuf enum value (written bare), as opposed to a string (written quoted)."""


def to_text(value: Any, indent: int = 0) -> str:
    """A Python value in protobuf text format (dicts are messages, lists repeated fields)."""
    pad = "  " * indent
    if isinstance(value, dict):
        lines = []
        for key, v in value.items():
            if isinstance(v, list) and v and isinstance(v[0], dict):
                lines.append(f"{pad}{key} [")
                lines.append(",\n".join(f"{pad}  {{\n{to_text(item, indent + 2)}\n{pad}  }}" for item in v))
                lines.append(f"{pad}]")
            elif isinstance(v, dict):
                lines.append(f"{pad}{key} {{\n{to_text(v, indent + 1)}\n{pad}}}")
            else:
                lines.append(f"{pad}{key}: {_scalar(v)}")
        return "\n".join(lines)
    raise TypeError(f"cannot write {type(value).__name__} as a message")


def _scalar(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list):
        return "[ " + ", ".join(_scalar(x) for x in v) + " ]"
    if isinstance(v, Enum):
        return str(v)  # written bare: TYPE_FP32, KIND_CPU
    if isinstance(v, str):
        return json.dumps(v)
    return str(v)
