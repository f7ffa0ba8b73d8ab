"""Scoring a vehicle-type model on crops in class folders: what ``roadside eval`` and every chain stage run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from compression.evaluate import Scorer
from compression.metrics import classification_report
from compression.tasks.vehicles import dataset as vehicles


def vehicle_items(data: Path, labels: list[str]) -> list[tuple[Path, int]]:
    """(path, index in ``labels``) for crops in class sub-folders named by the labels (any subset of them)."""
    folders = vehicles.class_folders(data)
    unknown = [f for f in folders if f not in labels]
    if unknown or not folders:
        raise ValueError(f"{data}: class folder(s) {unknown or '(none)'} are not labels of the model {labels}: "
                         f"expected sub-folders named after the labels, holding the crops")
    return [(p, labels.index(folders[y])) for p, y in vehicles.list_images(data, labels=None)]


def evaluate_vehicles(scorer: Scorer, data: Path, batch: int = 64, items: list | None = None,
                      include_training: bool = False) -> dict:
    """Crops in class sub-folders of ``data`` (or exactly ``items``, (path, label index) pairs),
    through the image front-end the model's contract names; unreadable files are skipped and counted.
    A class folder carries no split, so which crops are held out is the caller's folder
    (``include_training`` changes nothing here)."""
    from agent.features.image import ImageParams

    params = ImageParams.from_dict(scorer.frontend)
    items = vehicle_items(data, scorer.labels) if items is None else items
    if not items:
        raise ValueError(f"no images (.jpg, .png, ...) in the class folders of {data}")
    scores, ys, skipped = [], [], 0
    for i in range(0, len(items), batch):
        x, y, _, n_bad = vehicles.load_images(items[i:i + batch], params, progress=False)
        skipped += n_bad
        if len(x):
            scores.append(scorer.logits(x))
            ys.append(y)
    if not scores:
        raise ValueError(f"none of the {len(items)} images in {data} could be decoded")
    logits, y = np.concatenate(scores), np.concatenate(ys)
    result = classification_report(y, logits.argmax(1), scorer.labels)
    result["skipped"] = skipped
    result["logits"] = logits  # for agreement between stages; dropped from the CLI's JSON
    return result
