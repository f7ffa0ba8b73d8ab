"""``roadside fleet ...`` where the city side is installed; a pole's install has no ``fleet`` package."""

from __future__ import annotations

import argparse

ORDER = 1000


def register(sub: argparse._SubParsersAction) -> None:
    try:
        from fleet.cli import add_parser
    except ImportError:
        return
    add_parser(sub)
