"""The ``roadside`` subcommands, one module each.

A module here has ``register(sub)``, which adds its parser to the ``roadside`` subparsers and sets
``func`` (called with the parsed arguments, returning the exit status), and may set ``ORDER``, its
place in ``roadside --help`` (lower first; modules without one come last, by name). ``agent.cli``
finds the modules with pkgutil and never names them: a new command is a new file here.
``add_command(sub, run)`` makes such a parser from the module itself: its name, and its help
(and description) from the module's docstring, so what a command does is said once.

Building the parser must stay cheap and work on a pole: anything beyond the standard library and
``agent`` (torch, the city side, the demo) is imported inside ``func``, not at the top.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Callable

_HEAD = re.compile(r"``[^`]+``: (?P<help>.+)\.")


def add_command(sub: argparse._SubParsersAction, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
    """The parser of the command whose module holds ``func`` (its action), named as that module.

    The module's docstring says what the command does, once: its first paragraph is
    ``"``roadside [GROUP] NAME``: HELP."``, the help ``--help`` lists (without the final full stop);
    the paragraphs after it, if any, are the command's description. Under ``python -OO`` (no
    docstrings) the command is still there, without the help.
    """
    module = sys.modules[func.__module__]
    head, _, rest = (module.__doc__ or "").strip().partition("\n\n")
    said = _HEAD.fullmatch(" ".join(head.split()))
    if module.__doc__ and not said:
        raise ValueError(f"{module.__name__}: the docstring's first paragraph is not ``roadside NAME``: HELP.")
    p = sub.add_parser(module.__name__.rpartition(".")[2], help=said and said["help"],
                       description=" ".join(rest.split()) or None)
    p.set_defaults(func=func)
    return p
