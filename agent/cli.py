"""The ``roadside`` command.

Each subcommand is a module in ``agent/subcommands/`` with ``register(sub)``; they are found with
pkgutil, so a new command is a new file there and this one names none of them. The device has no
torch, so everything under ``compression`` (and the city side, and the demo) is imported inside
the subcommand that needs it, never while the parser is built.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from . import __version__, subcommands


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roadside", description="Edge inference for smart-city roadside units.")
    p.add_argument("--version", action="version", version=f"roadside {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)
    for module in _subcommand_modules():
        module.register(sub)
    return p


def _subcommand_modules() -> list:
    """Every module in ``agent/subcommands/``, in its ``ORDER`` (those without one last, by name)."""
    found = [importlib.import_module(f"{subcommands.__name__}.{m.name}")
             for m in pkgutil.iter_modules(subcommands.__path__)]
    return sorted(found, key=lambda mod: (getattr(mod, "ORDER", float("inf")), mod.__name__))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Logs and progress bars go to stderr: stdout is for results (``eval --json``).
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as e:
        # Bad input is the user's to fix: say what was wrong, without a traceback.
        print(f"roadside: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
