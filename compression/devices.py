"""Where training runs: ``auto`` (a CUDA GPU when torch sees one, else the CPU), ``cpu`` or ``cuda[:N]``.

Only training moves to the device (``model.to(device)``, each batch after it is built on the CPU);
augmentation, seeds and generators stay on the CPU, so a CPU run draws exactly the numbers it
always drew, and results come back to the CPU for scoring, pruning, quantisation and export.
Nothing here is imported by the edge agent: its install has no CUDA.
"""

from __future__ import annotations

import torch

CHOICES = ("auto", "cpu", "cuda")


class DeviceUnavailable(ValueError):
    """The device asked for does not exist here (the message names it and what there is)."""


def resolve_device(name: str | torch.device = "auto") -> torch.device:
    """``auto`` -> cuda when ``torch.cuda.is_available()`` else cpu; ``cpu``; ``cuda`` or ``cuda:N``, refused
    with the reason when this torch has no GPU to give."""
    if isinstance(name, torch.device):
        name = str(name)
    text = str(name).strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    if text == "cuda" or text.startswith("cuda:"):
        index = text.partition(":")[2]
        if index and not index.isdigit():
            raise DeviceUnavailable(f"device {name!r}: expected cuda or cuda:N with N a GPU index")
        if not torch.cuda.is_available():
            built = f"built with CUDA {torch.version.cuda}" if torch.version.cuda else "built without CUDA"
            raise DeviceUnavailable(f"device {name!r}: torch {torch.__version__} ({built}) sees no CUDA GPU "
                                    f"here; use --device cpu (or auto, which falls back to the CPU)")
        if index and int(index) >= torch.cuda.device_count():
            raise DeviceUnavailable(f"device {name!r}: only {torch.cuda.device_count()} CUDA GPU(s) here")
        return torch.device(text)
    raise DeviceUnavailable(f"device {name!r}: expected one of auto, cpu, cuda (or cuda:N)")
