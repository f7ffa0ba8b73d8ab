"""Loading a compression recipe: its ``task:`` picks the schema from ``compression.tasks``.

Problems are reported with the YAML line and the dotted key, like device configs. The
schemas live with their tasks (``compression/tasks/<task>/recipe.py``); what every recipe
shares is in ``recipe_base``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.schema import ConfigError, load_yaml, validate

from compression.recipe_base import RecipeBase


def recipe_class(task: Any, source: str) -> type[RecipeBase]:
    """The recipe schema of ``task`` (compression.tasks)."""
    from compression.tasks import get, tasks

    if task is None:
        raise ConfigError(source, [f"task: missing: every recipe names its task (known: {sorted(tasks())})"])
    try:
        return get(task).load("recipe")
    except KeyError as e:
        raise ConfigError(source, [f"task: {e.args[0]}"]) from None


def _task_of(path: Path | str) -> Any:
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError):
        return RecipeBase  # load_yaml below reports the unreadable file or bad YAML with its line
    return data.get("task") if isinstance(data, dict) else RecipeBase


def load_recipe(path: Path | str, **overrides: Any) -> RecipeBase:
    """Load and validate against the schema of the recipe's ``task``; ``overrides`` are dotted
    keys (``{"distil.epochs": 1}``), validated too."""
    task = _task_of(path)
    recipe = load_yaml(path, task if task is RecipeBase else recipe_class(task, str(path)))
    if not overrides:
        return recipe
    data = recipe.model_dump()
    for dotted, value in overrides.items():
        node = data
        *parents, leaf = dotted.split(".")
        for p in parents:
            node = node[p]
        node[leaf] = value
    return validate(type(recipe), data, f"{path} (with overrides {sorted(overrides)})")
