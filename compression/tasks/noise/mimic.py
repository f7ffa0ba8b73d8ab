"""The whole student as a second teacher of its own cut: the map it hands its embedding layer, position by position.

After a cut, ~1,260 clips re-teach the late blocks through 10 logits per view, and the cut student fits them
(about 92 % on its own training clips) yet scores 3-4 points below the whole student on new clips. The whole
distilled student, taken just before the cut, is the network the cut is meant to stand in for, on the same
front-end and the same views: its maps line up with the cut one's position by position. The input of the
last conv (the embedding layer) is the residual stream, which a plan never cuts (dropped blocks pass it on),
so it has the same shape in both: matching it gives channels x bands x frames numbers per view, and asks the
remaining blocks to compute what the dropped or thinned ones did, not only to end on the same 10 logits
(FitNets' hints, Romero et al. 2015, with the uncut network as the hint's source).

The term is the squared error relative to the reference map's energy (0 = the same map, 1 = a map of zeros),
so its weight means the same whatever the map's scale. The reference is frozen in eval mode, so its map of
view (clip, view number) is the same whenever it is drawn: it is computed once and cached, as the teacher's
logits are.
"""

from __future__ import annotations

import contextlib
import copy

import torch
from torch import nn


class Mimic:
    """``weight`` x the relative squared error between the student's and ``reference``'s input to the layer at
    ``layer`` (a dotted module name; by default the embedding layer of a slimmed mn04)."""

    def __init__(self, reference: nn.Module, weight: float, layer: str | None = None):
        self.reference = copy.deepcopy(reference).eval()
        for p in self.reference.parameters():
            p.requires_grad_(False)
        self.layer = layer or f"body.features.{len(reference.body.features) - 1}"
        self.weight = weight
        self.cache: dict[tuple[int, int], torch.Tensor] = {}
        self.reference_calls = 0
        self._seen: torch.Tensor | None = None

    def to(self, device) -> "Mimic":
        self.reference.to(device)
        return self

    @staticmethod
    def _tap(model: nn.Module, layer: str, store) -> torch.utils.hooks.RemovableHandle:
        return model.get_submodule(layer).register_forward_pre_hook(lambda m, inp: store(inp[0]))

    @contextlib.contextmanager
    def watching(self, student: nn.Module):
        """While open, every forward of ``student`` keeps its map at the layer for ``loss``."""
        handle = self._tap(student, self.layer, lambda t: setattr(self, "_seen", t))
        try:
            yield self
        finally:
            handle.remove()
            self._seen = None

    def maps(self, keys: list[tuple[int, int]], x: torch.Tensor) -> torch.Tensor:
        """The reference's maps of views ``keys`` (whose student input is ``x``), from the cache where it has them."""
        missing = [k for k, key in enumerate(keys) if key not in self.cache]
        if missing:
            got: list[torch.Tensor] = []
            handle = self._tap(self.reference, self.layer, got.append)
            try:
                with torch.inference_mode():
                    self.reference(x[missing])
            finally:
                handle.remove()
            self.reference_calls += len(missing)
            for k, m in zip(missing, got[0].cpu()):
                self.cache[keys[k]] = m.clone()
        return torch.stack([self.cache[key] for key in keys])

    def loss(self, keys: list[tuple[int, int]], x: torch.Tensor) -> torch.Tensor:
        """The weighted term for the student's last forward (on ``x``, views ``keys``), inside ``watching``."""
        if self._seen is None:
            raise RuntimeError("Mimic.loss needs the student's forward to run inside Mimic.watching(student)")
        target = self.maps(keys, x).to(self._seen.device)
        if target.shape != self._seen.shape:
            raise ValueError(f"prune.mimic_weight: the cut student's map at {self.layer} is "
                             f"{tuple(self._seen.shape[1:])}, the whole student's {tuple(target.shape[1:])}")
        return self.weight * relative_error(self._seen, target)


def relative_error(student: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the mean square of ``target``."""
    return ((student - target) ** 2).mean() / (target ** 2).mean().clamp_min(1e-12)
