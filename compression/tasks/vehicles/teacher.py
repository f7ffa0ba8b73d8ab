"""The vehicles teacher: a ResNet trained from scratch on the training split (no pretrained vision weights here).

Trained inside ``roadside compress --recipe compression/recipes/vehicles.yaml`` and cached
in the run's work folder: its lineage record (``compression.chain.lineage``) holds the hash of
what made it (teacher and augmentation settings, front-end, seed, split, training crops), so a
re-run with the same recipe and split reuses it and any change retrains. A checkpoint given in the recipe is reused as
is, but only if it was trained on this very split: a teacher that saw validation
images would flatter every number measured against it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from agent.features.image import ImageParams

from compression.tasks.vehicles.dataset import Split
from compression.image_augment import Views
from compression.image_train import Schedule, predict, train
from compression.chain import lineage
from compression.tasks.vehicles.resnet import ResNet

log = logging.getLogger(__name__)
CHECKPOINT_FORMAT = "roadside-teacher/1"


def build(section, n_classes: int) -> ResNet:
    """A ResNet from a recipe's teacher or student section (widths, blocks, stem, dropout)."""
    return ResNet(n_classes, list(section.widths), list(section.blocks), section.stem, section.dropout)


def teacher_frontend(recipe) -> dict:
    return recipe.teacher.frontend or recipe.student.frontend


def lineage_of(recipe, split: Split, train_list_sha256: str) -> tuple[dict, dict]:
    """(settings, inputs) that decide the teacher's weights (the training crops used, for smoke runs, included)."""
    t = recipe.teacher.model_dump(exclude={"checkpoint"})
    return ({"teacher": t, "augment": recipe.augment.model_dump(), "frontend": teacher_frontend(recipe),
             "seed": recipe.seed, "threads": recipe.threads}, {"split": split.sha256, "train": train_list_sha256})


def save_checkpoint(model: ResNet, path: Path, recipe, split: Split, history: list[dict]) -> Path:
    t = recipe.teacher
    torch.save({
        "format": CHECKPOINT_FORMAT, "arch": "resnet", "task": "vehicles", "labels": list(split.labels),
        "frontend": teacher_frontend(recipe), "window_seconds": 0.0,
        "net": {"widths": list(t.widths), "blocks": list(t.blocks), "stem": t.stem, "dropout": t.dropout},
        "split_sha256": split.sha256, "history": history,
        "state_dict": model.state_dict(),
    }, path)
    return path


def load_checkpoint(path: Path | str) -> tuple[ResNet, dict]:
    """A teacher saved by ``save_checkpoint``: the model (eval mode) and its config."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("arch") != "resnet":
        raise ValueError(f"{path}: not a vehicles teacher checkpoint ({CHECKPOINT_FORMAT}, arch resnet)")
    net = ckpt["net"]
    model = ResNet(len(ckpt["labels"]), net["widths"], net["blocks"], net["stem"], net["dropout"])
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval(), {k: v for k, v in ckpt.items() if k != "state_dict"}


def train_or_load(recipe, split: Split, train_list_sha256: str, images: list[np.ndarray], labels: np.ndarray,
                  val_x: np.ndarray, val_y: np.ndarray, work: Path, repo: Path) -> tuple[ResNet, Path, list[dict]]:
    """(teacher in eval mode, its checkpoint, its training history).

    ``val_x`` (teacher front-end) and ``val_y`` only draw the learning curve; nothing is
    chosen by them (no early stopping, no checkpoint picking).
    """
    given = recipe.teacher.checkpoint
    if given:
        path = Path(given) if Path(given).is_absolute() else repo / given
        model, cfg = load_checkpoint(path)
        if cfg.get("split_sha256") != split.sha256:
            raise ValueError(f"teacher.checkpoint {path} was trained on another split than data.split_file "
                             f"(split sha256 {str(cfg.get('split_sha256'))[:12]}... vs {split.sha256[:12]}...)")
        if cfg["frontend"] != teacher_frontend(recipe):
            raise ValueError(f"teacher.checkpoint {path}: its front-end {cfg['frontend']} differs from the recipe's")
        return model, path, cfg.get("history", [])

    path = work / "teacher.pt"
    config, inputs = lineage_of(recipe, split, train_list_sha256)
    if lineage.reusable(path, "teacher", config, inputs):
        model, cfg = load_checkpoint(path)
        return model, path, cfg.get("history", [])
    t_start = time.time()
    torch.manual_seed(recipe.seed)
    t = recipe.teacher
    model = build(t, len(split.labels))
    views = Views(images, labels, len(split.labels), [ImageParams.from_dict(teacher_frontend(recipe))],
                  recipe.augment, recipe.seed)

    def curve(epoch: int) -> dict:
        return {"val_accuracy": float((predict(model, val_x).argmax(1) == val_y).mean())}

    history = train(model, views, Schedule(t.epochs, t.lr, t.weight_decay, t.batch_size), recipe.seed, "teacher",
                    label_smoothing=t.label_smoothing, on_epoch=curve)
    save_checkpoint(model, path, recipe, split, history)
    lineage.write(path, "teacher", config, inputs, history[-1] if history else {}, time.time() - t_start)
    return model.eval(), path, history
