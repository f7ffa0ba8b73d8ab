"""Out-of-fold teachers: each training clip learns from teachers that never trained on it.

A teacher's outputs on the clips it trained on are near-certain and say little beyond the label;
on a clip it has not heard they are what a student must learn to say of new clips. Teachers
trained with ``roadside teacher train --holdout K/N`` (K = 0 .. N-1) each leave one part of the
recordings out, and their ``splits.json`` lists what each one heard.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from agent.features.audio import LogMelParams

from compression.manifest import sha256_file
from compression.tasks.noise.distil import Sources
from compression.tasks.noise.teacher import folds_of, load_checkpoint


@dataclass
class OutOfFold:
    paths: list[Path]
    teachers: list[nn.Module]
    heard: list[set[str]]  # per teacher: the clips it trained on, relative to the data root

    def identity(self) -> list[dict]:
        """What the manifest and the distillation's lineage record of these teachers."""
        return [{"teacher": f"{p.parent.name}/{p.name}", "teacher_sha256": sha256_file(p)} for p in self.paths]

    def folds(self) -> set[str]:
        return set(folds_of(set().union(*self.heard)))

    def sources(self, clips: list, root: Path) -> Sources:
        """Each clip's teachers: those that did not train on it (every clip needs one)."""
        names = [c.path.relative_to(root).as_posix() for c in clips]
        of_clip = tuple(tuple(k for k, heard in enumerate(self.heard) if n not in heard) for n in names)
        unheard = [n for n, ks in zip(names, of_clip) if not ks]
        if unheard:
            raise ValueError(f"teacher.out_of_fold: {len(unheard)} of {len(names)} training clips were heard by "
                             f"every one of these teachers (e.g. {unheard[0]}); add a teacher that left them out")
        return Sources(tuple(self.teachers), of_clip)


def load(paths: list[Path], frontend: dict, labels: list[str]) -> OutOfFold:
    """The teachers at ``paths``: each must take the reference teacher's front-end and labels and carry
    the ``splits.json`` that says which clips it heard."""
    want = LogMelParams.from_dict(frontend).to_dict()
    teachers, heard = [], []
    for i, path in enumerate(paths):
        where = f"teacher.out_of_fold[{i}] ({path})"
        model, cfg = load_checkpoint(path)
        if list(cfg["labels"]) != list(labels):
            raise ValueError(f"{where}: labels {cfg['labels']} differ from the reference teacher's {labels}")
        if LogMelParams.from_dict(cfg["frontend"]).to_dict() != want:
            raise ValueError(f"{where}: its front-end differs from the reference teacher's; the views are "
                             f"computed once for all teachers")
        splits = path.parent / "splits.json"
        if not splits.is_file():
            raise ValueError(f"{where}: no splits.json beside it, so nobody can say which clips it heard")
        teachers.append(model)
        heard.append(set(json.loads(splits.read_text())["train"]))
    return OutOfFold(list(paths), teachers, heard)
