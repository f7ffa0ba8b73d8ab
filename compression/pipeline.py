"""``roadside compress``: the recipe's ``task:`` picks its chain from ``compression.tasks``.

Each chain (``compression/tasks/<task>/chain.py``) trains what is its own and ends in the
shared tail (``compression.chain``). Raises ``GateFailed`` when the result must not ship.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

from compression.devices import resolve_device
from compression.recipe import load_recipe

log = logging.getLogger(__name__)


def run(recipe_path: Path, data=None, out: Path | None = None, work: Path | None = None, *,
        device: str = "auto", **overrides) -> dict:
    """The recipe's chain for its task. ``device`` (auto | cpu | cuda[:N]) is where training runs; a chain
    that does not take it trains on the CPU."""
    from compression.tasks import get

    recipe = load_recipe(recipe_path, **overrides)
    dev = resolve_device(device)
    chain = get(recipe.task).load("chain")
    if "device" in inspect.signature(chain).parameters:
        return chain(recipe, recipe_path, data, out, work, device=dev)
    if dev.type != "cpu":
        log.warning("the %s chain trains on the CPU only: device %s is not used", recipe.task, dev)
    return chain(recipe, recipe_path, data, out, work)
