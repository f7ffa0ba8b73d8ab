"""Dataclasses of whole-number counters, each starting at 0 (what a run or a batch tallies)."""

from __future__ import annotations

from dataclasses import make_dataclass


def counters(names: str) -> type:
    """A dataclass base with one ``int`` field per word of ``names``, in that order, each 0 by default.

    Subclass it for the named class (``class Written(counters("alerts summaries")): ...``); a
    subclass that adds fields of its own is a ``@dataclass`` too (they come after the counters).
    """
    return make_dataclass("Counters", [(n, int, 0) for n in names.split()])
