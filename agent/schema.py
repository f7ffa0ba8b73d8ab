"""Configuration is data with a schema: one strict base model and one YAML loader for all of it.

Every config section (device configs, recipes) derives from ``StrictModel``: unknown
keys are errors, so a typo never passes silently, and no float may be ``.inf`` or ``.nan``.
``load_yaml`` turns pydantic's errors into lines a person can act on: file, line, dotted
key path, value (shortened), message.

The loader is a guard as well as a parser, because a config can arrive from the network
(``cmd/reload``): the text is capped (``MAX_CONFIG_BYTES``), anchors and aliases are refused
(an alias bomb of a kilobyte otherwise expands to gigabytes), as are duplicate keys (the
second would silently win), nesting deeper than ``MAX_DEPTH`` and more than ``MAX_NODES``
nodes. Every failure is a ``ConfigError`` naming the line, never a traceback or a hang.
"""

from __future__ import annotations

import reprlib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)
MAX_CONFIG_BYTES = 256 * 1024  # the largest shipped config or recipe is under 4 kB
MAX_DEPTH = 32
MAX_NODES = 20_000
MAX_SHOWN = 80  # characters of a refused value shown in a message


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


class ConfigError(ValueError):
    """A config that was refused; ``problems`` holds one line per wrong key."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid configuration\n  " + "\n  ".join(problems))


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxtuple, _REPR.maxset = 2, 4, 4, 4, 4
_REPR.maxstring = _REPR.maxother = _REPR.maxlong = MAX_SHOWN


def shorten(value: Any, limit: int = MAX_SHOWN) -> str:
    """A bounded ``repr`` (a few items, two levels), cut to ``limit``: refused input is never echoed whole."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int over Python's 4300-digit repr limit
        return f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ------------------------------------------------------------------------------ parsing

class _Refused(yaml.MarkedYAMLError):
    pass


class _GuardedLoader(yaml.SafeLoader):
    """SafeLoader that refuses anchors, aliases, duplicate keys, deep nesting and too many nodes."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(None, None, "anchors and aliases (&, *) are not allowed in a config", event.start_mark)
        self._nodes += 1
        if self._nodes > MAX_NODES:
            raise _Refused(None, None, f"more than {MAX_NODES} values", event.start_mark)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _Refused(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
        if isinstance(node, yaml.MappingNode):
            seen = set()
            for key, _ in node.value:
                k = key.value if isinstance(key, yaml.ScalarNode) else None
                if k is not None and k in seen:
                    raise _Refused(None, None, f"duplicate key {shorten(k)}", key.start_mark)
                seen.add(k)
        return node


def parse_yaml(text: str | bytes, source: str = "config") -> tuple[Any, yaml.Node | None]:
    """(data, root node) of a YAML document, or ``ConfigError`` with the line of the problem."""
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(source, [f"larger than {MAX_CONFIG_BYTES} bytes (the most a config may be)"])
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(source, [f"not UTF-8 text (byte {e.start})"]) from None
    loader = None
    try:
        loader = _GuardedLoader(text)
        root = loader.get_single_node()
        data = loader.construct_document(root) if root is not None else None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(source, [f"{where}not valid YAML: {str(e.problem or e.context)[:200]}"]) from None
    except yaml.YAMLError as e:
        raise ConfigError(source, [f"not valid YAML: {str(e).splitlines()[0][:200]}"]) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as e:  # e.g. a timestamp 2024-02-30
        raise ConfigError(source, [f"not valid YAML: a value cannot be read ({type(e).__name__}: "
                                   f"{str(e)[:120]})"]) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, root


# --------------------------------------------------------------------------- validation

def _line_of(node: yaml.Node | None, loc: tuple[Any, ...]) -> int | None:
    """1-based line of the YAML node at ``loc`` (or of its deepest existing parent)."""
    line = node.start_mark.line + 1 if node is not None else None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = [v for k, v in node.value if k.value == str(key)]
            if not match:  # an extra key is reported at the key itself
                match = [k for k, _ in node.value if k.value == str(key)]
            node = match[0] if match else None
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
        else:
            node = None
        if node is None:
            break
        line = node.start_mark.line + 1
    return line


def format_errors(err: ValidationError, source: str, root: yaml.Node | None = None) -> list[str]:
    problems = []
    for e in err.errors()[:50]:
        loc = tuple(e["loc"])
        key = ".".join(shorten(p, 40) if not isinstance(p, (str, int)) else str(p)[:40] for p in loc) or "(top level)"
        line = _line_of(root, loc) if root is not None else None
        where = f"line {line}: " if line else ""
        shown = "" if e["type"] == "missing" else f" (got {shorten(e.get('input'))})"
        problems.append(f"{where}{key}: {e['msg'][:200]}{shown}")
    return problems


def validate(model_cls: type[M], data: Any, source: str = "config", root: yaml.Node | None = None) -> M:
    try:
        return model_cls.model_validate(data if data is not None else {})
    except ValidationError as err:
        raise ConfigError(source, format_errors(err, source, root)) from None


def load_text(text: str | bytes, model_cls: type[M], source: str = "config") -> M:
    """Parse (guarded) and validate YAML text; ``ConfigError`` listing every problem otherwise."""
    data, root = parse_yaml(text, source)
    return validate(model_cls, data, source, root)


def read_text(path: Path | str, limit: int = MAX_CONFIG_BYTES) -> bytes:
    """At most ``limit`` + 1 bytes of a file (so an oversized one is refused, not read whole)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read: {e.strerror or e}"]) from None
    except ValueError as e:  # a path with a NUL byte
        raise ConfigError(str(path)[:200], [f"cannot read: {e}"]) from None


def load_yaml(path: Path | str, model_cls: type[M]) -> M:
    """Read, parse and validate a YAML file; refuse it whole with every problem listed."""
    return load_text(read_text(path), model_cls, str(path))
