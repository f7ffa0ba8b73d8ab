"""Stages and canaries: which poles join a rollout at which stage.

``--stages 1%,10%,50%,100%`` are cumulative fractions of the poles that run the task. Stage k
holds ``ceil(f_k * N)`` poles in all (at least one more than stage k-1, never more than N).
Poles are ordered by interleaving sites (site A's first pole, site B's first, ..., then each
site's second): the 1 % canaries of a 20-site city come from 10 different sites, not from the
first site in alphabetical order. The order is seeded by the rollout's id, so a resumed controller
would choose the same, though it never needs to (the choice is stored with the rollout).
"""

from __future__ import annotations

import math
import random
import re
from collections import defaultdict

_PCT = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*%?\s*$")


class PlanError(ValueError):
    pass


def parse_stages(text: str) -> list[float]:
    """``"1%,10%,50%,100%"`` (or ``0.01,0.1,...``) -> increasing fractions in (0, 1]."""
    out = []
    for part in text.split(","):
        m = _PCT.match(part)
        if not m:
            raise PlanError(f"--stages: {part!r} is not a percentage like 10%")
        v = float(m.group(1))
        v = v / 100 if part.strip().endswith("%") or v > 1 else v
        if not 0 < v <= 1:
            raise PlanError(f"--stages: {part.strip()!r} is not in (0 %, 100 %]")
        out.append(v)
    if not out or any(b <= a for a, b in zip(out, out[1:])):
        raise PlanError(f"--stages {text!r}: give increasing percentages, e.g. 1%,10%,50%,100%")
    return out


def stage_sizes(n: int, stages: list[float]) -> list[int]:
    """Cumulative pole counts per stage for a fleet of ``n``."""
    sizes, prev = [], 0
    for f in stages:
        k = min(n, max(prev + 1, math.ceil(f * n - 1e-9)))
        sizes.append(k)
        prev = k
    return sizes


def spread_order(devices: list[tuple[str, str]], seed: int) -> list[tuple[str, str]]:
    """``[(device, site)]`` interleaved over sites (sites and poles within a site shuffled by ``seed``)."""
    rng = random.Random(seed)
    by_site: dict[str, list[str]] = defaultdict(list)
    for dev, site in sorted(devices):
        by_site[site].append(dev)
    sites = sorted(by_site)
    rng.shuffle(sites)
    for s in sites:
        rng.shuffle(by_site[s])
    out, i = [], 0
    while len(out) < len(devices):
        for s in sites:
            if i < len(by_site[s]):
                out.append((by_site[s][i], s))
        i += 1
    return out


def assign(devices: list[tuple[str, str]], stages: list[float], seed: int) -> list[tuple[str, str, int]]:
    """``[(device, site, stage index)]``: the first ``sizes[0]`` of the spread order are the canaries."""
    order = spread_order(devices, seed)
    sizes = stage_sizes(len(order), stages)
    out, k = [], 0
    for i, (dev, site) in enumerate(order):
        while k < len(sizes) - 1 and i >= sizes[k]:
            k += 1
        if i < sizes[-1]:
            out.append((dev, site, k))
    return out
