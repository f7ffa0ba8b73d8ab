"""``roadside teacher train --task noise``: the fine-tuned mn04 noise teacher, with its lineage.

Writes to ``out``:
  teacher.pt            state_dict plus the config it needs (arch, labels, front-end, clip length)
  teacher_logits.npz    un-augmented logits of every train/val clip, for distillation
  splits.json           the exact clip lists of each split
  report.json           zero-shot and fine-tuned metrics, per-epoch history, timing
  confusion.png, curves.png
  manifest.json         sha256 of all of the above, recipe, data-list hashes, tool versions
"""

from __future__ import annotations

import json

import logging
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from agent.features.audio import TEACHER_LOGMEL, log_mel
from agent.schema import load_yaml

from compression.tasks.noise import urbansound
from compression.datasets.datadir import resolve_data_dir
from compression.manifest import sha256_file, write_manifest
from compression.metrics import classification_report
from compression.chain.plots import plot_confusion, plot_curves, write_json
from compression.tasks.noise import finetune
from compression.tasks.noise.mn04 import CHECKPOINT_SHA256, MN, load_pretrained
from compression.tasks.noise.teacher_recipe import TeacherRecipe

log = logging.getLogger(__name__)
WINDOW_SECONDS = 4.0
DEFAULT_RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "noise_teacher.yaml"
CHECKPOINT_FORMAT = "roadside-teacher/1"


def clip_features(clips: list[urbansound.Clip], desc: str) -> tuple[torch.Tensor, torch.Tensor, list]:
    """Teacher log-mels (B, 1, 128, T) and labels for the clips that could be read."""
    waves, kept, skipped = urbansound.load_clips(clips, sample_rate=TEACHER_LOGMEL.sample_rate,
                                                 seconds=WINDOW_SECONDS)
    if skipped:
        log.warning("%s: %d unreadable clips skipped", desc, skipped)
    feats = [log_mel(w, TEACHER_LOGMEL) for w in tqdm(waves, desc=f"log-mel {desc}", unit="clip")]
    x = torch.from_numpy(np.stack(feats))[:, None]
    y = torch.tensor([c.label for c in kept])
    return x, y, kept


def save_checkpoint(model: MN, path: Path, labels: list[str]) -> None:
    torch.save({
        "format": CHECKPOINT_FORMAT,
        "arch": "mn04",
        "task": "noise",
        "labels": list(labels),
        "frontend": TEACHER_LOGMEL.to_dict(),
        "window_seconds": WINDOW_SECONDS,
        "state_dict": model.state_dict(),
    }, path)


def load_checkpoint(path: Path | str) -> tuple[MN, dict]:
    """A teacher saved by ``save_checkpoint``: the model (eval mode) and its config."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a roadside teacher checkpoint (format {CHECKPOINT_FORMAT} expected)")
    model = MN(n_classes=len(ckpt["labels"]))
    model.load_state_dict(ckpt["state_dict"], strict=True)
    return model.eval(), {k: v for k, v in ckpt.items() if k != "state_dict"}


def training_folds(checkpoint: Path | str) -> list[str] | None:
    """Folds the teacher at ``checkpoint`` trained on, from the ``splits.json`` written beside it
    (None when it is not there: then nobody can say which clips it has seen)."""
    splits = Path(checkpoint).parent / "splits.json"
    if not splits.is_file():
        return None
    return folds_of(json.loads(splits.read_text())["train"])


def folds_of(clips) -> list[str]:
    """The folds of clip paths written relative to the data root (``fold1/…``); clips in the root have none."""
    return sorted({Path(p).parts[0] for p in clips if len(Path(p).parts) > 1})


def split_clips(root: Path, val_fold: str) -> tuple[list, list]:
    clips = urbansound.list_clips(root)
    folds = sorted({c.fold for c in clips})
    if val_fold not in folds:
        raise ValueError(f"val_fold {val_fold!r} not found in {root} (folds there: {folds})")
    train = [c for c in clips if c.fold != val_fold]
    val = [c for c in clips if c.fold == val_fold]
    if not train:
        raise ValueError(f"no training folds in {root} besides {val_fold!r}")
    return train, val


def run(data: str | Path | None, out: Path, recipe_path: Path | None = None, *, device: str = "auto",
        **overrides) -> dict:
    """Fine-tune (on ``device``: auto | cpu | cuda[:N]), evaluate and write the teacher folder; returns the report."""
    from compression.devices import resolve_device

    recipe = _load_recipe(recipe_path, overrides)
    dev = resolve_device(device)
    data_root = resolve_data_dir(data)
    us_root = urbansound.find_root(data)
    ckpt_path = data_root / recipe.checkpoint
    if not ckpt_path.is_file():
        raise FileNotFoundError(f"pretrained checkpoint not found: {ckpt_path} (recipe key 'checkpoint')")
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(recipe.seed)
    np.random.seed(recipe.seed)

    train_clips, val_clips = split_clips(us_root, recipe.val_fold)
    held_out = []
    if recipe.holdout is not None:  # an out-of-fold teacher: one part of the recordings is never heard
        h = recipe.holdout
        part = urbansound.deal_recordings(train_clips, h.parts, h.seed)
        held_out = [c for c, k in zip(train_clips, part) if k == h.part]
        train_clips = [c for c, k in zip(train_clips, part) if k != h.part]
    if recipe.max_clips:
        train_clips, val_clips = train_clips[:recipe.max_clips], val_clips[:recipe.max_clips]
    log.info("training on %s (%d clips; %d held out), validating on %s (%d clips), device %s",
             ", ".join(sorted({c.fold for c in train_clips})), len(train_clips), len(held_out), recipe.val_fold,
             len(val_clips), dev)
    t0 = time.time()
    x_train, y_train, train_clips = clip_features(train_clips, "train")
    x_val, y_val, val_clips = clip_features(val_clips, "val")
    t_features = time.time() - t0
    labels = list(urbansound.LABELS)

    model = load_pretrained(ckpt_path)
    zs_scores = finetune.zero_shot_scores(finetune.predict(model, x_val))
    zero_shot = classification_report(y_val.numpy(), zs_scores.argmax(1).numpy(), labels)
    log.info("zero-shot (mapped AudioSet) accuracy on %s: %.4f", recipe.val_fold, zero_shot["accuracy"])

    model = finetune.new_head(model, len(labels), recipe.head_init)

    def val_accuracy(m: MN) -> float:
        return float((finetune.predict(m, x_val).argmax(1) == y_val).float().mean())

    t0 = time.time()
    model, history = finetune.train(model, x_train, y_train, recipe, val_accuracy, device=dev)
    t_train = time.time() - t0

    val_logits = finetune.predict(model, x_val)
    train_logits = finetune.predict(model, x_train)
    final = classification_report(y_val.numpy(), val_logits.argmax(1).numpy(), labels)
    report = _report(recipe, train_clips, val_clips, zero_shot, final, history, t_features, t_train, dev)
    report["held_out_clips"] = len(held_out)
    _write_folder(out, model, recipe, report, us_root, ckpt_path, train_clips, val_clips, train_logits, val_logits,
                  held_out)
    return report


def _report(recipe: TeacherRecipe, train_clips: list, val_clips: list, zero_shot: dict, final: dict,
            history: list, t_features: float, t_train: float, device: torch.device) -> dict:
    return {
        "task": "noise",
        "model": "mn04 (EfficientAT, AudioSet mAP .432) fine-tuned on UrbanSound8K",
        "val_fold": recipe.val_fold,
        "train_folds": sorted({c.fold for c in train_clips}),
        "n_train": len(train_clips),
        "n_val": len(val_clips),
        "zero_shot": {k: zero_shot[k] for k in ("accuracy", "macro_f1", "per_class")},
        "fine_tuned": final,
        "history": history,
        "seconds": {"features": round(t_features, 1), "fine_tune": round(t_train, 1),
                    "per_epoch": round(t_train / recipe.epochs, 1)},
        "threads": torch.get_num_threads(),
        "device": str(device),
        "licence": "trained on UrbanSound8K (CC BY-NC 3.0): non-commercial use only",
    }


def _load_recipe(recipe_path: Path | None, overrides: dict) -> TeacherRecipe:
    recipe = load_yaml(recipe_path or DEFAULT_RECIPE, TeacherRecipe)
    if overrides:
        recipe = TeacherRecipe.model_validate({**recipe.model_dump(), **overrides})
    return recipe


def _write_folder(out: Path, model: MN, recipe: TeacherRecipe, report: dict, us_root: Path, ckpt_path: Path,
                  train_clips: list, val_clips: list, train_logits: torch.Tensor, val_logits: torch.Tensor,
                  held_out: list) -> None:
    """The checkpoint, its logits, the exact splits, the report and plots, and the manifest over them all."""
    labels, final = list(urbansound.LABELS), report["fine_tuned"]
    save_checkpoint(model, out / "teacher.pt", labels)
    rel = lambda clips: [c.path.relative_to(us_root).as_posix() for c in clips]  # noqa: E731
    np.savez_compressed(out / "teacher_logits.npz",
                        train_paths=np.array(rel(train_clips)), train_logits=train_logits.numpy(),
                        val_paths=np.array(rel(val_clips)), val_logits=val_logits.numpy())
    write_json({"val_fold": recipe.val_fold, "train": rel(train_clips), "val": rel(val_clips),
                "held_out": rel(held_out)}, out / "splits.json")
    write_json(report, out / "report.json")
    plot_confusion(final["confusion"], labels, out / "confusion.png",
                   f"noise teacher, {recipe.val_fold}: accuracy {final['accuracy']:.3f}")
    plot_curves(report["history"], out / "curves.png", "noise teacher fine-tuning")
    files = [out / n for n in ("teacher.pt", "teacher_logits.npz", "splits.json", "report.json",
                               "confusion.png", "curves.png")]
    write_manifest(
        out, stage="teacher", files=files,
        inputs={"pretrained": ckpt_path.name, "pretrained_sha256": sha256_file(ckpt_path),
                "pretrained_expected_sha256": CHECKPOINT_SHA256},
        recipe=recipe.model_dump(),
        data_lists={"train": urbansound.data_list_sha256(train_clips, us_root),
                    "val": urbansound.data_list_sha256(val_clips, us_root)},
        extra={"task": "noise", "labels": labels, "frontend": TEACHER_LOGMEL.to_dict(),
               "window_seconds": WINDOW_SECONDS, "training_folds": report["train_folds"],
               "params": sum(p.numel() for p in model.parameters()),
               "metrics": {"accuracy": final["accuracy"], "macro_f1": final["macro_f1"]}},
    )


def train_summary(data: str | Path | None, out: Path, recipe_path: Path | None = None, *, device: str = "auto",
                  **overrides) -> str:
    """``roadside teacher train --task noise``: ``run``, summed up in one line."""
    report = run(data, out, recipe_path, device=device, **overrides)
    ft, zs = report["fine_tuned"], report["zero_shot"]
    return (f"noise teacher on {report['val_fold']}: accuracy {ft['accuracy']:.4f}, macro-F1 {ft['macro_f1']:.4f} "
            f"(zero-shot {zs['accuracy']:.4f}); fine-tuning {report['seconds']['fine_tune']} s; wrote {out}")
