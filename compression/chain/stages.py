"""One record per stage of a chain: what it scored on the held-out data, what it costs, how fast it runs.

Every stage of every task is scored by the task's own evaluator (what ``roadside eval`` runs)
on the same held-out data; the record keeps the logits (``_logits``, never written) so that
stages can be compared with each other and with the teacher.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import onnx

from compression.metrics import top1_agreement, top1_confidence

log = logging.getLogger(__name__)


def int8_weight_bytes(path: Path) -> int:
    model = onnx.load(str(path))
    return sum(int(np.prod(t.dims)) for t in model.graph.initializer
               if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) and len(t.dims) > 1)


@dataclass
class Stages:
    """The stages scored so far, in order; the first one scored is the teacher."""

    unit: str  # what latency is per ("per s of audio")
    # for ``score`` (a task that scores its stages itself ``add``s them):
    evaluate: Callable[[Any], dict] | None = None  # scorer -> metrics on the held-out data (with "logits")
    keep: tuple[str, ...] = ()  # which of those metrics a stage's record keeps
    cost: Callable[[int], dict] | None = None  # MACs of one input -> the compute figure ({"macs_per_second": ..})
    latency: Callable[[Path, dict], dict] | None = None  # (ONNX file, front-end) -> frontend_ms, model_ms, total_ms
    tuning: Callable[[Any], dict] | None = None  # scorer -> metrics on the tuning split (training data)
    results: dict[str, dict] = field(default_factory=dict)
    tuned: dict[str, float] = field(default_factory=dict)  # stage -> accuracy on the tuning split

    def score(self, name: str, scorer, onnx_path: Path | None, params: int, macs: int) -> dict:
        metrics = self.evaluate(scorer)
        entry = {k: metrics[k] for k in self.keep}
        entry.update(params=params, **self.cost(macs), frontend=scorer.frontend)
        if onnx_path is not None:
            entry["latency"] = self.latency(onnx_path, scorer.frontend)
            entry["onnx_bytes"] = onnx_path.stat().st_size
            entry["int8_weight_bytes"] = int8_weight_bytes(onnx_path)
        logits = metrics["logits"]
        # the rollout controller's default shadow gates: top-1 agreement with the teacher, mean top-1 probability
        teacher = self.results.get("teacher", {}).get("_logits", logits)
        entry["agreement"] = top1_agreement(logits, teacher)
        entry["confidence"] = top1_confidence(logits)
        entry["_logits"], entry["_macs"] = logits, macs
        self.results[name] = entry
        log.info("%s: accuracy %.4f, macro-F1 %.4f, agreement %.4f, %d params%s", name, entry["accuracy"],
                 entry["macro_f1"], entry["agreement"], params,
                 f", {entry['latency']['total_ms']:.3f} ms {self.unit}" if onnx_path else "")
        return entry

    def add(self, name: str, entry: dict) -> dict:
        """A stage scored by the task itself (metrics the shared ``score`` does not know)."""
        self.results[name] = entry
        return entry

    def tune(self, name: str, scorer) -> float:
        """Accuracy of a stage on the tuning split (training data): what chooses settings, never the gate's data."""
        if self.tuning is None:
            raise ValueError("this chain has no tuning split")
        if name not in self.tuned:
            self.tuned[name] = float(self.tuning(scorer)["accuracy"])
            log.info("%s on the tuning split: accuracy %.4f", name, self.tuned[name])
        return self.tuned[name]

    def agreement(self, a: str, b: str) -> float:
        """Share of held-out inputs on which stages ``a`` and ``b`` give the same top-1 class."""
        return top1_agreement(self.results[a]["_logits"], self.results[b]["_logits"])

    def written(self) -> dict[str, dict]:
        """The records as the report writes them (without the logits and other in-memory arrays)."""
        return {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in self.results.items()}
