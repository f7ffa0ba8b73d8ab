"""Signal front-ends shared by training, evaluation and the device (numpy/scipy only)."""

from __future__ import annotations

from dataclasses import fields
from typing import Any, TypeVar

P = TypeVar("P")


def params_from_dict(cls: type[P], d: dict[str, Any], kind: str, error: type[Exception]) -> P:
    """``cls(**d)`` for a front-end's parameter dataclass, the exact inverse of its ``to_dict``:
    ``d["kind"]`` must be ``kind``, every field present and no key unknown, else ``error`` names them."""
    d = dict(d)
    got = d.pop("kind", None)
    if got != kind:
        raise error(f"front-end kind is {got!r}, expected {kind!r}")
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown, missing = sorted(set(d) - names), sorted(names - set(d))
    if unknown:
        raise error(f"unknown {kind} parameter(s) {unknown}; known: {sorted(names)}")
    if missing:
        raise error(f"missing {kind} parameter(s) {missing}")
    return cls(**d)
