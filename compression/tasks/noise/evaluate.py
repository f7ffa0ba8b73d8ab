"""Scoring a noise model on UrbanSound8K-named clips: what ``roadside eval`` and every chain stage run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from agent.features.audio import LogMelParams, log_mel

from compression.evaluate import Scorer, held_out_clips
from compression.metrics import classification_report, topk_accuracy
from compression.tasks.noise import urbansound


def evaluate_noise(scorer: Scorer, data: Path, batch: int = 32, clips: list | None = None,
                   include_training: bool = False) -> dict:
    """Clips named like UrbanSound8K's, in fold folders of any name or directly in ``data``
    (or exactly ``clips``), scored with the front-end the model's contract names. Folds the model
    trained on are left out and named in ``excluded`` unless ``include_training``."""
    params = LogMelParams.from_dict(scorer.frontend)
    clips = urbansound.list_clips(data) if clips is None else clips
    if not clips:
        raise ValueError(f"no clips named like UrbanSound8K's (fsID-classID-occurrence-slice.flac) in {data}")
    clips, held_out = held_out_clips(scorer, data, clips, include_training)
    scores, kept, skipped = [], [], 0
    for i in range(0, len(clips), batch):
        waves, ok, n_bad = urbansound.load_clips(clips[i:i + batch], sample_rate=params.sample_rate,
                                                 seconds=scorer.window_seconds, progress=False)
        skipped += n_bad
        if not ok:
            continue
        x = np.stack([log_mel(w, params) for w in waves])[:, None]
        scores.append(scorer.logits(x))
        kept.extend(ok)
    logits = np.concatenate(scores)
    y = np.array([c.label for c in kept])
    pred = logits.argmax(1)
    result = classification_report(y, pred, scorer.labels)
    folds = sorted({c.fold for c in kept})
    result["top3_accuracy"] = topk_accuracy(y, logits, 3)
    result["per_fold"] = {f or ".": float((pred[[c.fold == f for c in kept]] ==
                                           y[[c.fold == f for c in kept]]).mean()) for f in folds}
    result["skipped"] = skipped
    result.update(held_out)
    result["logits"] = logits  # for agreement between stages; dropped from the CLI's JSON
    return result
