"""Component configs as plain types: dataclass <-> JSON-safe dict.

Checkpoints carry their config so they reload anywhere (no pickled argparse). JSON has no
infinity, and λ = ∞ (the frozen token) is a real setting, so non-finite floats are stored
as the strings "inf" / "-inf" / "nan" and read back as floats.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, TypeVar

C = TypeVar("C", bound="Config")


def _to_plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "inf", "-inf", "nan"
    if isinstance(value, tuple | list):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _to_plain(v) for k, v in value.items()}
    return value


def _from_plain(value: Any, annotation: Any) -> Any:
    if isinstance(value, str) and value in ("inf", "-inf", "nan") and "float" in str(annotation):
        return float(value)
    if isinstance(value, list) and "tuple" in str(annotation):
        return tuple(value)
    return value


@dataclasses.dataclass
class Config:
    """Base for every component config: `to_dict()` / `from_dict()` with strict keys."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _to_plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown config keys {unknown}; known: {sorted(names)}")
        hints = typing.get_type_hints(cls)
        return cls(**{k: _from_plain(v, hints.get(k)) for k, v in data.items()})

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)
