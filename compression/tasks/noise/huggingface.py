"""A Hugging Face audio-classification model folder as a teacher (optional extra: ``pip install -e '.[hf]'``).

The folder is what ``save_pretrained`` writes (config.json, weights, preprocessor_config.json);
it is read with ``local_files_only``: nothing is fetched from a hub. Three things make it a
teacher for ``compression.tasks.noise.chain.compress``:

- its feature extractor, expressed as our ``LogMelParams`` so the teacher is scored and
  distilled by the same feature code as every other stage. AST's extractor is Kaldi fbank
  (25 ms Hann windows every 10 ms, pre-emphasis 0.97, Kaldi mel bands from 20 Hz,
  ln with a float-epsilon floor, ``(x - mean) / (2 std)``): our front-end computes the same
  except Kaldi's per-frame DC removal and per-frame pre-emphasis edge (and it adds the floor
  where Kaldi clamps to it), so the two differ visibly in the lowest two bands only. ``fidelity`` measures what that costs, against the model as optimum
  exports it run on the extractor's own features;
- an adapter module: our ``(B, 1, n_mels, T)`` in, the model's ``(B, max_length, n_mels)``
  (padded like the extractor pads), logits out in the order of the data's labels;
- ``export_optimum``: the ONNX the Hugging Face tooling would ship, the reference for ``fidelity``.

Only log-mel extractors can be expressed this way; raw-waveform models (wav2vec2, HuBERT) are
refused with the reason, since their "front-end" is the network itself.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from agent.features.audio import LogMelParams, log_mel
from agent.hashing import sha256_file

KALDI_FLOOR = float(np.finfo(np.float32).eps)  # Kaldi's log floor (torchaudio's and transformers' fbank)
INSTALL_HINT = "pip install -e '.[hf]' (transformers and optimum-onnx)"


class HuggingFaceTeacherError(ValueError):
    """A model folder that cannot be used as a teacher, with the reason."""


def _transformers():
    try:
        import transformers
    except ImportError as e:  # an optional extra: say how to get it
        raise ImportError(f"Hugging Face teachers need transformers: {INSTALL_HINT}") from e
    return transformers


def ast_frontend(extractor) -> LogMelParams:
    """The LogMelParams closest to an ``ASTFeatureExtractor`` (Kaldi fbank conventions)."""
    sr = int(extractor.sampling_rate)
    win, hop = int(round(0.025 * sr)), int(round(0.010 * sr))
    mean, std = (float(extractor.mean), float(extractor.std)) if extractor.do_normalize else (0.0, 0.5)
    return LogMelParams(sample_rate=sr, n_fft=1 << (win - 1).bit_length(), win_length=win, hop_length=hop,
                        n_mels=int(extractor.num_mel_bins), fmin=20.0, fmax=sr / 2, preemphasis=0.97,
                        window="hann_symmetric", center=False, log_offset=KALDI_FLOOR,
                        norm_shift=-mean, norm_scale=2 * std)


# feature extractor class -> its front-end as LogMelParams, and the input the model takes
FRONTENDS = {"ASTFeatureExtractor": ast_frontend}


class ASTAdapter(nn.Module):
    """Our log-mel ``(B, 1, n_mels, T)`` -> the model's ``(B, max_length, n_mels)`` -> logits in ``order``.

    The extractor pads the *unnormalised* fbank with zeros to ``max_length`` frames and then
    normalises, so padded frames hold ``(0 + shift) / scale``; frames past ``max_length`` are cut.
    """

    def __init__(self, model: nn.Module, params: LogMelParams, max_length: int, order: list[int]):
        super().__init__()
        self.model, self.max_length = model, max_length
        self.pad_value = (0.0 + params.norm_shift) / params.norm_scale
        self.register_buffer("order", torch.tensor(order, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, 0].transpose(1, 2)[:, :self.max_length]
        missing = self.max_length - x.shape[1]
        if missing > 0:
            x = nn.functional.pad(x, (0, 0, 0, missing), value=self.pad_value)
        return self.model(input_values=x).logits.index_select(1, self.order)


@dataclass
class HuggingFaceTeacher:
    module: nn.Module          # what compress() takes: log-mel in, logits in ``labels`` order out
    frontend: dict             # LogMelParams dict
    labels: list[str]
    path: Path
    extractor: object          # the model's own feature extractor (for fidelity)

    def identity(self) -> dict:
        """The folder's files by sha256, for the manifest (a folder has no single file hash)."""
        files = sorted(p for p in self.path.rglob("*") if p.is_file())
        listing = {p.relative_to(self.path).as_posix(): sha256_file(p) for p in files}
        digest = hashlib.sha256(json.dumps(listing, sort_keys=True).encode()).hexdigest()
        return {"teacher": f"huggingface:{self.path.name}", "teacher_sha256": digest, "teacher_files": listing}


def load_teacher(model_dir: Path | str, labels: list[str] | tuple[str, ...]) -> HuggingFaceTeacher:
    """The model in ``model_dir`` as a teacher whose outputs follow ``labels`` (the data's classes).

    The model's ``id2label`` must name every one of ``labels`` (any order, extra classes ignored)."""
    tf = _transformers()
    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise HuggingFaceTeacherError(f"{path}: not a Hugging Face model folder (no config.json)")
    if not (path / "preprocessor_config.json").is_file():
        raise HuggingFaceTeacherError(f"{path}: no preprocessor_config.json: the teacher's front-end is unknown")
    extractor = tf.AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
    kind = type(extractor).__name__
    if kind not in FRONTENDS:
        raise HuggingFaceTeacherError(
            f"{path}: feature extractor {kind} is not a log-mel front-end this pipeline can express "
            f"(supported: {sorted(FRONTENDS)}); raw-waveform models cannot share the device's log-mel")
    model = tf.AutoModelForAudioClassification.from_pretrained(path, local_files_only=True).eval()
    names = {str(v): int(k) for k, v in model.config.id2label.items()}
    missing = [name for name in labels if name not in names]
    if missing:
        raise HuggingFaceTeacherError(f"{path}: config.json id2label has no class {missing} "
                                      f"(the data's labels are {list(labels)}; the model's {sorted(names)})")
    params = FRONTENDS[kind](extractor)
    adapter = ASTAdapter(model, params, int(extractor.max_length), [names[n] for n in labels]).eval()
    return HuggingFaceTeacher(adapter, params.to_dict(), list(labels), path, extractor)


def export_optimum(model_dir: Path | str, out_dir: Path | str, opset: int | None = None) -> Path:
    """The model exported by optimum (task audio-classification; opset None: optimum's choice for the
    architecture), as the Hugging Face tooling ships it."""
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as e:
        raise ImportError(f"exporting a Hugging Face model needs optimum: {INSTALL_HINT}") from e
    out_dir = Path(out_dir)
    # optimum validates the export against PyTorch itself (do_validation) and raises when it differs
    main_export(str(model_dir), output=out_dir, task="audio-classification", opset=opset,
                local_files_only=True, do_validation=True)
    return out_dir / "model.onnx"


def fidelity(teacher: HuggingFaceTeacher, optimum_onnx: Path, waves: np.ndarray) -> dict:
    """How closely the teacher as compress() sees it (our log-mel -> adapter) follows the model as
    Hugging Face runs it (its extractor -> the optimum ONNX), on ``waves`` at the extractor's rate."""
    import onnxruntime as ort

    params = LogMelParams.from_dict(teacher.frontend)
    session = ort.InferenceSession(str(optimum_onnx), providers=["CPUExecutionProvider"])
    feed = session.get_inputs()[0].name
    ref = teacher.extractor(list(waves), sampling_rate=params.sample_rate, return_tensors="np")["input_values"]
    ref_logits = session.run(["logits"], {feed: ref.astype(np.float32)})[0][:, teacher.module.order.numpy()]
    ours = np.stack([log_mel(w, params) for w in waves])
    with torch.inference_mode():
        our_logits = teacher.module(torch.from_numpy(ours[:, None])).numpy()
    frames = min(ours.shape[2], ref.shape[1])
    diff = np.abs(ours.transpose(0, 2, 1)[:, :frames] - ref[:, :frames])
    return {"clips": int(len(waves)),
            "top1_agreement": float((ref_logits.argmax(1) == our_logits.argmax(1)).mean()),
            "max_abs_logit_diff": float(np.abs(ref_logits - our_logits).max()),
            "feature_mean_abs_diff": float(diff.mean()),
            "feature_max_abs_diff_above_band_1": float(diff[:, :, 2:].max()),
            "feature_max_abs_diff": float(diff.max())}
