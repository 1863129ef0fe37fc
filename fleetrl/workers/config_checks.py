"""Checks pydantic's lax mode leaves out: it takes ``true`` for an integer or a number (``max_batch: true``
becomes 1). ``reject_bool_numbers`` walks what a config was parsed from beside the parsed model and names
every such field; config models call it from a wrap validator, so the YAML config and the REST bodies
refuse them alike."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel


def reject_bool_numbers(raw: Any, parsed: Any, path: str = "") -> None:
    """Raise ValueError naming the first field where ``raw`` has a boolean and ``parsed`` a number."""
    if isinstance(raw, bool):
        if isinstance(parsed, int | float) and not isinstance(parsed, bool):
            raise ValueError(f"{path or 'value'}: expected a number, got {str(raw).lower()}")
        return
    if isinstance(parsed, BaseModel) and isinstance(raw, dict):
        for name, field in type(parsed).model_fields.items():
            key = field.alias or name
            if key in raw:
                reject_bool_numbers(raw[key], getattr(parsed, name), f"{path}.{key}" if path else key)
    elif isinstance(parsed, dict) and isinstance(raw, dict):
        for key, value in raw.items():
            if key in parsed:
                reject_bool_numbers(value, parsed[key], f"{path}.{key}" if path else str(key))
    elif isinstance(parsed, list | tuple) and isinstance(raw, list | tuple) and len(raw) == len(parsed):
        for i, (r, p) in enumerate(zip(raw, parsed, strict=True)):
            reject_bool_numbers(r, p, f"{path}[{i}]")
