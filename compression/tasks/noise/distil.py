"""Knowledge distillation: the student learns the teacher's outputs on the very view the teacher saw.

"Patient and consistent" teaching (Beyer et al., CVPR 2022): teacher and student see
the same augmented clip -- the same roll, gain and mixup partner in the waveform, and
masks over the same time and frequency ranges -- each through its own front-end.
Views are seeded by (clip, view number), so view v of clip i is identical whenever it
is drawn; the teacher's logits are cached per view and paid for once. A clip may learn from
other teachers than the reference (``Sources``): out-of-fold teachers that never heard it.

Loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, mixup labels)
       [+ embedding_weight * (1 - cos(W s_emb, t_emb)), W a linear map trained with the student, then dropped]
       [+ after a cut, prune.mimic_weight * the relative error against the whole student's map: ``mimic``].
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from agent.features.audio import LogMelParams, band_centres_hz, frame_centres_s, log_mel
from agent.features.resample import resample

from compression.tasks.noise.mimic import Mimic
from compression.tasks.noise.recipe import DistilSection
from compression.distillation import distillation_loss
from compression.schedule import ema_update, optimise, warmup_cosine


def first_output(out) -> torch.Tensor:
    """Logits, whether a model returns them alone or first in a tuple (mn04 returns (logits, embedding))."""
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass(frozen=True)
class Sources:
    """Which teachers each training clip learns from: the mean of the logits of ``teachers[k]`` for every
    ``k`` in ``of_clip[i]``."""
    teachers: tuple[nn.Module, ...]
    of_clip: tuple[tuple[int, ...], ...]  # per training clip, indices into teachers

    def __post_init__(self):
        bad = [i for i, ks in enumerate(self.of_clip) if not ks or not all(0 <= k < len(self.teachers) for k in ks)]
        if bad:
            raise ValueError(f"{len(bad)} training clip(s) with no teacher to learn from, e.g. clip {bad[0]}")


@dataclass(frozen=True)
class View:
    wave: np.ndarray       # (S,) float32 at the clip's sample rate
    target: np.ndarray     # (C,) soft label (mixup)
    freq_hz: tuple         # ((lo, hi), ...) frequency ranges to mask
    time_s: tuple          # ((start, end), ...) time ranges to mask


class Views:
    """Seeded augmented views of a set of clips, in the waveform domain."""

    def __init__(self, waves: np.ndarray, labels: np.ndarray, n_classes: int, sample_rate: int,
                 mask_params: LogMelParams, cfg: DistilSection, seed: int):
        self.waves, self.labels, self.n_classes = waves, labels, n_classes
        self.sample_rate, self.cfg, self.seed = sample_rate, cfg.augment, seed
        # masks are drawn in the student's bands and frames, then expressed in Hz and seconds
        self.band_hz = band_centres_hz(mask_params)
        self.frame_s = frame_centres_s(mask_params, mask_params.frames(waves.shape[1]))

    def __call__(self, i: int, v: int) -> View:
        a = self.cfg
        rng = np.random.default_rng((self.seed, i, v))
        x = self.waves[i]
        y = np.eye(self.n_classes, dtype=np.float32)[self.labels[i]]
        if a.mixup_alpha > 0:
            j = int(rng.integers(len(self.waves)))
            lam = float(rng.beta(a.mixup_alpha, a.mixup_alpha))
            lam = max(lam, 1 - lam)  # the clip itself stays dominant
            x = lam * x + (1 - lam) * self.waves[j]
            y = lam * y + (1 - lam) * np.eye(self.n_classes, dtype=np.float32)[self.labels[j]]
        if a.time_roll:
            x = np.roll(x, int(rng.integers(len(x))))  # clips are repeat-padded: a roll is a valid clip
        if a.gain_db:
            x = x * np.float32(10 ** (rng.uniform(-a.gain_db, a.gain_db) / 20))
        freq, time = [], []
        n_f, n_t = len(self.band_hz), len(self.frame_s)
        for _ in range(a.masks_per_axis):
            if a.freq_mask:
                w = int(rng.integers(a.freq_mask)); s = int(rng.integers(n_f - w + 1))  # noqa: E702
                if w:
                    freq.append((self.band_hz[s], self.band_hz[s + w - 1]))
            if a.time_mask:
                w = int(rng.integers(min(a.time_mask, n_t))); s = int(rng.integers(n_t - w + 1))  # noqa: E702
                if w:
                    time.append((self.frame_s[s], self.frame_s[s + w - 1]))
        if a.speed:  # drawn last, so views without it are the same as before it existed
            x = change_speed(x, 1 + rng.uniform(-a.speed, a.speed))
        return View(np.clip(x, -1, 1).astype(np.float32), y, tuple(freq), tuple(time))


def change_speed(wave: np.ndarray, factor: float) -> np.ndarray:
    """``wave`` played ``factor`` times faster (to the nearest 1 %), tiled or cut back to its own length: clips
    are repeat-padded, so a tiled clip is a valid one."""
    played = resample(wave, int(round(100 * factor)), 100)
    return np.resize(played, wave.shape).astype(np.float32)  # np.resize repeats the array to fill


def features(views: list[View], params: LogMelParams, source_rate: int) -> torch.Tensor:
    """(B, 1, F, T) log-mel of the views through ``params``, with each view's masks applied."""
    waves = np.stack([v.wave for v in views])
    if params.sample_rate != source_rate:
        waves = resample(waves, source_rate, params.sample_rate)
    x = log_mel(waves, params)
    bands, frames = band_centres_hz(params), frame_centres_s(params, x.shape[-1])
    for k, v in enumerate(views):
        fill = x[k].mean()
        for lo, hi in v.freq_hz:
            x[k, (bands >= lo) & (bands <= hi), :] = fill
        for t0, t1 in v.time_s:
            x[k, :, (frames >= t0) & (frames <= t1)] = fill
    return torch.from_numpy(x)[:, None]


def train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """Training mode, with BatchNorm layers left in eval mode (fixed statistics) when ``freeze_bn``, and
    those whose weights are not trained (``requires_grad`` off) always: a frozen layer stays as it was."""
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            weights = list(m.parameters())  # none without affine: then only freeze_bn decides
            if freeze_bn or (weights and not any(p.requires_grad for p in weights)):
                m.eval()


class Distiller:
    """Runs KD epochs for any student; keeps the per-view teacher cache across runs (distil, prune steps)."""

    def __init__(self, teacher: nn.Module, teacher_fe: LogMelParams, student_fe: LogMelParams,
                 waves: np.ndarray, labels: np.ndarray, n_classes: int, sample_rate: int,
                 cfg: DistilSection, seed: int, device: str | torch.device = "cpu", sources: Sources | None = None):
        from compression.devices import resolve_device

        self.teacher = teacher.eval()
        self.sources = sources or Sources((self.teacher,), ((0,),) * len(waves))
        if len(self.sources.of_clip) != len(waves):
            raise ValueError(f"sources name teachers for {len(self.sources.of_clip)} clips, not the {len(waves)} "
                             f"training clips")
        for t in self.sources.teachers:
            t.eval()
        self.device = resolve_device(device)  # training only: views, seeds and the cache stay on the CPU
        self.teacher_fe, self.student_fe, self.sample_rate = teacher_fe, student_fe, sample_rate
        self.views = Views(waves, labels, n_classes, sample_rate, student_fe, cfg, seed)
        self.cfg, self.seed = cfg, seed
        self.cache: dict[tuple[int, int], torch.Tensor] = {}
        self.embeddings: dict[tuple[int, int], torch.Tensor] = {}  # only with cfg.embedding_weight
        self.epochs_done = 0  # picks the view number, so later runs reuse cached views
        self.teacher_calls = 0

    def state_dict(self) -> dict:
        """What a reused stage restores (``compression.chain.lineage``): the teacher's outputs so far and
        how many epochs ran (which picks the next epoch's views)."""
        state = {"cache": self.cache, "epochs_done": self.epochs_done, "teacher_calls": self.teacher_calls}
        return {**state, "embeddings": self.embeddings} if self.embeddings else state

    def load_state_dict(self, state: dict) -> None:
        self.cache, self.embeddings = dict(state["cache"]), dict(state.get("embeddings", {}))
        self.epochs_done, self.teacher_calls = state["epochs_done"], state["teacher_calls"]

    def teacher_logits(self, keys: list[tuple[int, int]], views: list[View]) -> torch.Tensor:
        missing = [k for k, key in enumerate(keys) if key not in self.cache]
        if missing:
            x = features([views[k] for k in missing], self.teacher_fe, self.sample_rate)
            out, emb = self._teach(x, [self.sources.of_clip[keys[k][0]] for k in missing])
            self.teacher_calls += len(missing)
            for k, logits in zip(missing, out):
                self.cache[keys[k]] = logits.clone()
            if emb is not None:
                for k, e in zip(missing, emb):
                    self.embeddings[keys[k]] = e.clone()
        return torch.stack([self.cache[key] for key in keys])

    def _teach(self, x: torch.Tensor, which: list[tuple[int, ...]]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The mean logits (and embeddings, with cfg.embedding_weight) of each row's teachers on ``x``."""
        sums: list[torch.Tensor | None] = [None, None]
        for t, model in enumerate(self.sources.teachers):
            rows = [r for r, ks in enumerate(which) if t in ks]
            if not rows:
                continue
            with torch.inference_mode():
                raw = model(x[rows].to(self.device))
            # _projection has checked that the teacher returns an embedding when one is matched
            parts = (first_output(raw), raw[1] if self.cfg.embedding_weight else None)
            for j, part in enumerate(parts):
                if part is not None:
                    if sums[j] is None:
                        sums[j] = torch.zeros(len(which), *part.shape[1:])
                    sums[j][rows] += part.cpu()
        n = torch.tensor([len(ks) for ks in which], dtype=torch.float32)[:, None]
        return sums[0] / n, (sums[1] / n if sums[1] is not None else None)

    def run(self, student: nn.Module, epochs: int, lr: float, desc: str, mimic: Mimic | None = None) -> list[dict]:
        """``epochs`` of KD on ``self.device``; the student (and the teacher) are back on the CPU after.
        ``mimic`` adds matching the whole student's map (``compression.tasks.noise.mimic``) to the loss."""
        if epochs == 0:
            return []
        student.to(self.device)
        teachers = {id(t): t for t in (self.teacher, *self.sources.teachers)}.values()
        for t in teachers:
            t.to(self.device)
        watching = mimic.to(self.device).watching(student) if mimic is not None else contextlib.nullcontext()
        try:
            with watching:
                return self._epochs(student, epochs, lr, desc, mimic)
        finally:
            student.cpu()
            for t in teachers:
                t.cpu()
            if mimic is not None:
                mimic.to("cpu")

    def _epochs(self, student: nn.Module, epochs: int, lr: float, desc: str, mimic: Mimic | None) -> list[dict]:
        cfg, dev = self.cfg, self.device
        params = [p for p in student.parameters() if p.requires_grad]
        project = self._projection(student) if cfg.embedding_weight else None
        if project is not None:
            params += list(project.parameters())
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
        n = len(self.views.waves)
        steps_per_epoch = math.ceil(n / cfg.batch_size)
        total, warmup = epochs * steps_per_epoch, steps_per_epoch // 2 + 1
        gen = torch.Generator().manual_seed(self.seed + self.epochs_done)
        ema = None  # with cfg.ema_decay: the weight average, from the first step's weights on
        history, step = [], 0
        for epoch in range(epochs):
            v = self.epochs_done % cfg.views_per_clip
            order = torch.randperm(n, generator=gen).tolist()
            train_mode(student, cfg.freeze_bn)
            losses, mimicked, started = [], [], time.perf_counter()
            bar = tqdm(range(0, n, cfg.batch_size), desc=f"{desc} {epoch + 1}/{epochs}", unit="batch", leave=False)
            for s in bar:
                keys = [(i, v) for i in order[s:s + cfg.batch_size]]
                views = [self.views(i, vv) for i, vv in keys]
                teacher = self.teacher_logits(keys, views).to(dev)
                x = features(views, self.student_fe, self.sample_rate).to(dev)
                y = torch.from_numpy(np.stack([vw.target for vw in views])).to(dev)
                for g in opt.param_groups:
                    g["lr"] = lr * warmup_cosine(step, total, warmup)
                out = student(x)
                loss = self.loss(first_output(out), teacher, y)
                if project is not None:
                    target = torch.stack([self.embeddings[key] for key in keys]).to(dev)
                    loss = loss + cfg.embedding_weight * embedding_loss(project(out[1]), target)
                if mimic is not None:
                    term = mimic.loss(keys, x)
                    mimicked.append(term.item())
                    loss = loss + term
                optimise(opt, loss, losses, bar)
                if cfg.ema_decay:
                    if ema is None:
                        ema = copy.deepcopy(student)
                    else:
                        ema_update(ema, student, cfg.ema_decay)
                step += 1
            self.epochs_done += 1
            history.append({"run": desc, "epoch": epoch + 1, "train_loss": float(np.mean(losses)),
                            "seconds": round(time.perf_counter() - started, 2)})  # where a run's time goes, per device
            if mimicked:  # its share of train_loss
                history[-1]["mimic_loss"] = float(np.mean(mimicked))
            tqdm.write(f"{desc} epoch {epoch + 1}/{epochs}: loss {history[-1]['train_loss']:.4f}"
                       + (f" (mimic {history[-1]['mimic_loss']:.4f})" if mimicked else ""))
        if ema is not None:
            student.load_state_dict(ema.state_dict())
        return history

    def _projection(self, student: nn.Module) -> nn.Module:
        """A fresh linear map from the student's embedding width to the teacher's (seeded; dropped after the run)."""
        widths = []
        for model, fe in ((student, self.student_fe), (self.teacher, self.teacher_fe)):
            was_training = model.training
            model.eval()
            with torch.inference_mode():
                out = model(features([self.views(0, 0)], fe, self.sample_rate).to(self.device))
            model.train(was_training)
            if not isinstance(out, (tuple, list)) or len(out) < 2:
                raise ValueError(f"distil.embedding_weight needs a {'student' if model is student else 'teacher'} "
                                 f"that returns (logits, embedding)")
            widths.append(out[1].shape[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed + self.epochs_done)
            return nn.Linear(*widths).to(self.device)

    def loss(self, logits: torch.Tensor, teacher_logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The shared KD loss, its hard term the cross-entropy against the mixup labels."""
        ce = torch.sum(-y * torch.log_softmax(logits, 1), 1).mean()
        return distillation_loss(logits, teacher_logits, ce, self.cfg.temperature, self.cfg.alpha)


def embedding_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean (1 - cosine) between the mapped student embeddings and the teacher's: direction only, so the
    teacher's scale (which its own head absorbs) does not dominate the KD loss."""
    return (1 - nn.functional.cosine_similarity(student, teacher, dim=1)).mean()
