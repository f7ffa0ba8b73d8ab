"""Distillation views: the teacher and the student see the same, reproducible augmented clip."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from agent.features.audio import STUDENT_LOGMEL, TEACHER_LOGMEL, band_centres_hz
from compression.tasks.noise.distil import Distiller, Sources, Views, change_speed, features
from compression.tasks.noise.recipe import DistilSection, ViewAugmentSection

RATE = 16000


@pytest.fixture
def clips() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return (0.1 * rng.standard_normal((6, RATE))).astype(np.float32), np.arange(6) % 3


def _views(clips, **augment) -> Views:
    cfg = DistilSection(augment=ViewAugmentSection(**augment))
    return Views(clips[0], clips[1], 3, RATE, STUDENT_LOGMEL, cfg, seed=7)


def test_a_view_is_the_same_every_time_it_is_drawn(clips):
    views = _views(clips)
    a, b = views(2, 5), views(2, 5)
    assert np.array_equal(a.wave, b.wave) and a.freq_hz == b.freq_hz and a.time_s == b.time_s
    assert not np.array_equal(views(2, 6).wave, a.wave)


def test_mixup_labels_sum_to_one_and_favour_the_clip(clips):
    v = _views(clips, mixup_alpha=0.4)(0, 1)
    assert v.target.sum() == pytest.approx(1.0)
    assert v.target[clips[1][0]] >= 0.5


def test_speed_perturbation_moves_pitch_and_keeps_the_clips_length():
    tone = np.sin(2 * np.pi * 1000 * np.arange(RATE) / RATE).astype(np.float32)
    for factor in (0.9, 1.13):
        faster = change_speed(tone, factor)
        peak_hz = np.argmax(np.abs(np.fft.rfft(faster[:RATE // 2]))) * 2  # 2 Hz bins over half a second
        assert faster.shape == tone.shape and faster.dtype == np.float32
        assert peak_hz == pytest.approx(1000 * factor, abs=4)


def test_speed_perturbation_leaves_every_other_draw_of_a_view_as_it_was(clips):
    """``augment.speed`` is drawn after everything else: turning it on changes the sound, not the mixup
    partner, the masks or the label of view v of clip i (so runs without it reproduce older ones)."""
    plain, fast = _views(clips, mixup_alpha=0.4)(3, 2), _views(clips, mixup_alpha=0.4, speed=0.1)(3, 2)
    assert plain.freq_hz == fast.freq_hz and plain.time_s == fast.time_s
    assert np.array_equal(plain.target, fast.target)
    assert fast.wave.shape == plain.wave.shape and not np.allclose(fast.wave, plain.wave)


def test_masks_cover_the_same_hertz_in_both_front_ends(clips):
    views = _views(clips, freq_mask=20, time_mask=0, mixup_alpha=0, gain_db=0, time_roll=False)
    v = next(v for v in (views(0, k) for k in range(20)) if v.freq_hz)
    s = features([v], STUDENT_LOGMEL, RATE)[0, 0].numpy()
    t = features([v], TEACHER_LOGMEL, RATE)[0, 0].numpy()
    for lo, hi in v.freq_hz:
        for x, params in ((s, STUDENT_LOGMEL), (t, TEACHER_LOGMEL)):
            bands = band_centres_hz(params)
            masked = (bands >= lo) & (bands <= hi)
            assert masked.any()
            rows = x[masked]
            assert np.allclose(rows, rows.flat[0])  # one fill value over the masked bands


def test_teacher_is_asked_once_per_view(clips):
    calls = []

    class Teacher(torch.nn.Module):
        def forward(self, x):
            calls.append(len(x))
            return torch.zeros(len(x), 3)

    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    student(torch.zeros(1, 1, STUDENT_LOGMEL.n_mels, STUDENT_LOGMEL.frames(RATE)))
    cfg = DistilSection(batch_size=3, views_per_clip=2)
    d = Distiller(Teacher(), STUDENT_LOGMEL, STUDENT_LOGMEL, clips[0], clips[1], 3, RATE, cfg, seed=0)
    d.run(student, epochs=4, lr=1e-3, desc="test")
    # 6 clips x 2 views: epochs 3 and 4 reuse the views of epochs 1 and 2
    assert d.teacher_calls == 12 and sum(calls) == 12


class Constant(torch.nn.Module):
    """A teacher that says the same logits of every clip."""

    def __init__(self, logits: list[float]):
        super().__init__()
        self.logits = torch.tensor(logits)

    def forward(self, x):
        return self.logits.expand(len(x), -1)


def test_each_clip_learns_from_the_mean_of_its_own_teachers(clips):
    a, b = Constant([3.0, 0.0, 0.0]), Constant([0.0, 3.0, 0.0])
    reference = Constant([0.0, 0.0, 9.0])  # scored against, never learnt from when sources are given
    sources = Sources((a, b), ((0,), (1,), (0, 1), (1,), (0,), (0, 1)))
    d = Distiller(reference, STUDENT_LOGMEL, STUDENT_LOGMEL, clips[0], clips[1], 3, RATE, DistilSection(), seed=0,
                  sources=sources)
    keys = [(i, 0) for i in range(6)]
    got = d.teacher_logits(keys, [d.views(i, v) for i, v in keys])
    want = torch.tensor([[3, 0, 0], [0, 3, 0], [1.5, 1.5, 0], [0, 3, 0], [3, 0, 0], [1.5, 1.5, 0]])
    assert torch.equal(got, want.float())


def test_a_clip_without_a_teacher_is_refused_before_any_training(clips):
    with pytest.raises(ValueError, match="1 training clip.*no teacher.*clip 2"):
        Sources((Constant([0.0, 0.0, 0.0]),), ((0,), (0,), (), (0,), (0,), (0,)))
    with pytest.raises(ValueError, match="for 2 clips, not the 6"):
        Distiller(Constant([0.0, 0.0, 0.0]), STUDENT_LOGMEL, STUDENT_LOGMEL, clips[0], clips[1], 3, RATE,
                  DistilSection(), seed=0, sources=Sources((Constant([0.0, 0.0, 0.0]),), ((0,), (0,))))


def _embedding_fit(weight: float) -> float:
    """How well the student's embedding, after KD at ``weight``, linearly predicts the teacher's (R^2 over the
    32 views it trained on, 5 regressors). The teacher's logits say nothing (zeros); only its embedding
    carries the signal: a fixed mix of the clip's band energies."""
    rng = np.random.default_rng(2)
    time_s = np.arange(RATE) / RATE  # tones at random pitches: band energies that vary in many directions
    clips = sum(0.2 * rng.uniform(0, 1, (32, 1)) * np.sin(2 * np.pi * rng.uniform(100, 7000, (32, 1)) * time_s)
                for _ in range(3)).astype(np.float32)
    torch.manual_seed(0)
    bands = STUDENT_LOGMEL.n_mels
    mix = torch.randn(bands, 4, generator=torch.Generator().manual_seed(1))

    class Teacher(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 3), x.mean(dim=(1, 3)) @ mix

    class Student(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed, self.head = torch.nn.Linear(bands, 4), torch.nn.Linear(4, 3)

        def forward(self, x):
            e = self.embed(x.mean(dim=(1, 3)))
            return self.head(e), e

    student, teacher = Student(), Teacher()
    cfg = DistilSection(batch_size=8, views_per_clip=1, embedding_weight=weight, alpha=1.0, weight_decay=0.0,
                        augment=ViewAugmentSection(mixup_alpha=0, freq_mask=0, time_mask=0))
    d = Distiller(teacher, STUDENT_LOGMEL, STUDENT_LOGMEL, clips, np.arange(32) % 3, 3, RATE, cfg, seed=0)
    d.run(student, epochs=80, lr=3e-2, desc="test")
    x = features([d.views(i, 0) for i in range(len(clips))], STUDENT_LOGMEL, RATE)
    with torch.no_grad():
        s, t = student(x)[1], teacher(x)[1]
    s1 = torch.cat([s, torch.ones(len(s), 1)], 1)
    fit = s1 @ torch.linalg.lstsq(s1, t).solution
    return float(1 - ((t - fit) ** 2).sum() / ((t - t.mean(0)) ** 2).sum())


def test_asked_to_the_student_learns_the_teachers_embedding_through_a_map_it_then_drops():
    """``distil.embedding_weight``: 384 numbers per view instead of 10 logits for a pruned student to re-learn
    from. Here the teacher's logits are all zero, so only the embedding term can teach the student anything
    about its embedding; the linear map it is matched through is not part of the student."""
    with_embedding, without = _embedding_fit(5.0), _embedding_fit(0.0)
    assert with_embedding > 0.9 and without < 0.6


def test_embedding_distillation_needs_a_student_with_an_embedding(clips):
    class Teacher(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 3), torch.zeros(len(x), 4)

    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    student(torch.zeros(1, 1, STUDENT_LOGMEL.n_mels, STUDENT_LOGMEL.frames(RATE)))
    cfg = DistilSection(batch_size=3, embedding_weight=1.0)
    d = Distiller(Teacher(), STUDENT_LOGMEL, STUDENT_LOGMEL, clips[0], clips[1], 3, RATE, cfg, seed=0)
    with pytest.raises(ValueError, match="embedding_weight needs a student"):
        d.run(student, epochs=1, lr=1e-3, desc="test")


def test_with_ema_decay_a_run_ends_on_the_moving_average_of_its_steps_weights(clips):
    """``distil.ema_decay``: the student trains exactly as without it, and is left holding the per-step
    exponential moving average of its weights (the first step's weights, then d * average + (1 - d) * step)."""

    class Recorded(torch.nn.Module):
        """A linear student that notes the weights each training forward sees (those after the previous step)."""

        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.linear, self.seen = torch.nn.Linear(STUDENT_LOGMEL.n_mels, 3), []

        def forward(self, x):
            if self.training:
                self.seen.append(self.linear.weight.detach().clone())
            return self.linear(x.mean(dim=(1, 3)))

    class Teacher(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(len(x), 3)

    def run(decay: float) -> Recorded:
        student = Recorded()
        cfg = DistilSection(batch_size=2, views_per_clip=1, ema_decay=decay)
        d = Distiller(Teacher(), STUDENT_LOGMEL, STUDENT_LOGMEL, clips[0], clips[1], 3, RATE, cfg, seed=0)
        d.run(student, epochs=2, lr=1e-2, desc="test")
        return student

    plain, averaged = run(0.0), run(0.6)
    assert all(torch.equal(a, b) for a, b in zip(plain.seen, averaged.seen))  # the same training
    steps = plain.seen[1:] + [plain.linear.weight.detach()]  # the weights after each of the 6 steps
    expected = steps[0]
    for w in steps[1:]:
        expected = 0.6 * expected + 0.4 * w
    assert len(steps) == 6 and not torch.allclose(expected, steps[-1])
    assert torch.allclose(averaged.linear.weight, expected, atol=1e-6)
