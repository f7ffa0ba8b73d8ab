"""Configuration is data with a schema: one strict base model and one YAML loader for all of it.

Every config section (device configs, recipes) derives from ``StrictModel``: unknown
keys are errors, so a typo never passes silently. ``load_yaml`` turns pydantic's
errors into lines a person can act on: file, line, dotted key path, value, message.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)


class ConfigError(ValueError):
    """A config that was refused; ``problems`` holds one line per wrong key."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid configuration\n  " + "\n  ".join(problems))


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
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(p) for p in loc) or "(top level)"
        line = _line_of(root, loc) if root is not None else None
        where = f"line {line}: " if line else ""
        value = e.get("input")
        shown = "" if e["type"] == "missing" else f" (got {value!r})"
        problems.append(f"{where}{key}: {e['msg']}{shown}")
    return problems


def validate(model_cls: type[M], data: Any, source: str = "config", root: yaml.Node | None = None) -> M:
    try:
        return model_cls.model_validate(data if data is not None else {})
    except ValidationError as err:
        raise ConfigError(source, format_errors(err, source, root)) from None


def load_yaml(path: Path | str, model_cls: type[M]) -> M:
    """Read, parse and validate a YAML file; refuse it whole with every problem listed."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(str(path), [f"cannot read: {e.strerror or e}"]) from None
    try:
        root = yaml.compose(text)
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        raise ConfigError(str(path), [f"{where}not valid YAML: {getattr(e, 'problem', e)}"]) from None
    return validate(model_cls, data, str(path), root)
