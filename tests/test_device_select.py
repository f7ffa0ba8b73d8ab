"""Where training runs (``compression/devices.py``): auto picks the GPU when torch sees one, else the CPU;
an explicit cuda without a GPU is refused with the reason; a CPU training step is reproducible."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from agent.features.audio import STUDENT_LOGMEL
from compression.devices import DeviceUnavailable, resolve_device
from compression.tasks.noise.distil import Distiller
from compression.tasks.noise.recipe import DistilSection

RATE = 16000
NO_GPU = not torch.cuda.is_available()


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU: auto picks it")
def test_auto_is_the_cpu_without_a_gpu():
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu") == resolve_device(torch.device("cpu"))


@pytest.mark.skipif(not NO_GPU, reason="this machine has a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:0", "CUDA"])
def test_cuda_without_a_gpu_is_refused_with_the_reason(name):
    with pytest.raises(DeviceUnavailable, match=r"sees no CUDA GPU here; use --device cpu") as e:
        resolve_device(name)
    assert repr(name) in str(e.value) and isinstance(e.value, ValueError)  # the CLI prints ValueErrors


@pytest.mark.parametrize("name", ["gpu", "tpu", "cuda:x", ""])
def test_an_unknown_device_names_the_choices(name):
    with pytest.raises(DeviceUnavailable, match="auto, cpu, cuda|cuda:N"):
        resolve_device(name)


def test_the_functions_the_cli_calls_take_a_device_keyword():
    """``roadside compress`` calls compression.pipeline.run, ``roadside teacher train``
    compression.tasks.noise.teacher.run: both take ``device`` (default auto) for the CLI's --device."""
    from compression import pipeline
    from compression.tasks.noise import chain
    from compression.tasks.noise import teacher as noise

    for fn in (pipeline.run, chain.run_noise, chain.compress, noise.run):
        p = inspect.signature(fn).parameters["device"]
        assert p.default == "auto", fn.__qualname__


def _distil_step(device: str) -> tuple[list[dict], dict]:
    """Two KD epochs of a tiny student on fixed noise clips; the losses and the trained weights."""
    torch.manual_seed(0)
    rng = np.random.default_rng(1)
    waves, labels = (0.1 * rng.standard_normal((6, RATE))).astype(np.float32), np.arange(6) % 3
    teacher = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    student = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(3))
    x = torch.zeros(1, 1, STUDENT_LOGMEL.n_mels, STUDENT_LOGMEL.frames(RATE))
    teacher(x), student(x)
    cfg = DistilSection(batch_size=3, views_per_clip=2)
    d = Distiller(teacher, STUDENT_LOGMEL, STUDENT_LOGMEL, waves, labels, 3, RATE, cfg, seed=0, device=device)
    history = d.run(student, epochs=2, lr=1e-2, desc="test")
    assert all(p.device.type == "cpu" for p in student.parameters())  # back on the CPU for export
    return history, {k: v.clone() for k, v in student.state_dict().items()}


def test_a_training_step_on_the_cpu_is_reproducible():
    h1, w1 = _distil_step("cpu")
    h2, w2 = _distil_step("cpu")
    assert h1 == h2 and all(torch.equal(w1[k], w2[k]) for k in w1)
    assert h1[0]["train_loss"] != h1[1]["train_loss"]  # it trained


def test_the_teacher_fine_tuning_step_runs_on_the_device_and_returns_to_the_cpu():
    from compression.tasks.noise import finetune
    from compression.tasks.noise.teacher_recipe import TeacherRecipe

    class Tiny(torch.nn.Module):  # the part of mn04's interface train() uses: classifier[5], (logits, emb)
        def __init__(self):
            super().__init__()
            self.features = torch.nn.Sequential()
            self.classifier = torch.nn.Sequential(*[torch.nn.Identity()] * 5, torch.nn.Linear(8, 3))

        def forward(self, x):
            emb = x.mean(dim=(1, 3))[:, :8]
            return self.classifier(emb), emb

    def once():
        torch.manual_seed(0)
        model = Tiny()
        recipe = TeacherRecipe(epochs=2, batch_size=4, ema_decay=0.5)
        x, y = torch.randn(8, 1, 32, 64), torch.arange(8) % 3
        kept, history = finetune.train(model, x, y, recipe, lambda m: 0.0, device="cpu")
        return kept, history

    (a, ha), (b, hb) = once(), once()
    assert ha == hb and torch.equal(a.classifier[5].weight, b.classifier[5].weight)
    assert a.classifier[5].weight.device.type == "cpu"
