"""The plots every chain's report carries beside its JSON."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display on a build box or in CI
    import matplotlib.pyplot as plt

    return plt


def plot_confusion(cm: Sequence[Sequence[int]], labels: Sequence[str], path: Path, title: str) -> Path:
    """Row-normalised confusion matrix (recall on the diagonal), counts written in each cell."""
    plt = _pyplot()
    cm = np.asarray(cm)
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros(cm.shape), where=rows > 0)
    size = 1.5 + 0.6 * len(labels)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            if cm[i, j]:
                ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if frac[i, j] > 0.5 else "black")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of true class")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_curves(history: list[dict[str, float]], path: Path, title: str) -> Path:
    """Training loss and validation accuracy per epoch."""
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, ax1 = plt.subplots(figsize=(6, 3.5))
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", color="tab:red", label="train loss")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("train loss", color="tab:red")
    ax2 = ax1.twinx()
    ax2.plot(epochs, [h["val_accuracy"] for h in history], "s-", color="tab:blue", label="val accuracy")
    ax2.set_ylabel("validation accuracy", color="tab:blue")
    ax1.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_json(obj: Any, path: Path) -> Path:
    path.write_text(json.dumps(obj, indent=2) + "\n")
    return path


def plot_accuracy_latency(stages: dict[str, dict], path: Path, title: str,
                          xlabel: str = "ms per second of audio (front-end + model, 1 thread)",
                          ylabel: str = "accuracy on the validation fold (%)") -> Path:
    """Accuracy against end-to-end latency (front-end + model, one thread, ``latency.total_ms``), per stage."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, s in stages.items():
        if "latency" not in s:
            continue
        x, y = s["latency"]["total_ms"], 100 * s["accuracy"]
        ax.scatter(x, y, s=30 + s["params"] / 5000)
        ax.annotate(f"{name}\n{s['params'] / 1000:.0f}K params", (x, y), textcoords="offset points",
                    xytext=(6, 4), fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def classification_plots(out: Path, labels: Sequence[str], name: str, held_out: str,
                         xlabel: str = "ms per second of audio (front-end + model, 1 thread)"):
    """The plots of a classification chain's report: the shipped stage's confusion matrix and every
    stage's accuracy against latency; ``plots(stage records, shipped stage) -> files``."""
    def plots(results: dict[str, dict], shipped: str) -> list[Path]:
        s = results[shipped]
        return [plot_confusion(s["confusion"], labels, out / "confusion.png",
                               f"{name} ({shipped}), {held_out}: accuracy {s['accuracy']:.3f}"),
                plot_accuracy_latency(results, out / "accuracy_latency.png", name, xlabel=xlabel,
                                      ylabel=f"accuracy, {held_out} (%)")]
    return plots
