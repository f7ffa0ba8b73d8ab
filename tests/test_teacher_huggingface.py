"""A Hugging Face audio-classification folder as the teacher (the optional [hf] extra).

Nothing can be downloaded, so the models are tiny ones built here from a config and saved with
``save_pretrained``: their weights are random, which is enough to check the front-end mapping,
the label order, optimum's export and the whole chain, not to say anything about accuracy.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

try:
    import transformers
    from optimum.exporters.onnx import main_export  # noqa: F401  (the export path must import)
except ImportError:
    if os.environ.get("CI") == "true":  # CI installs the extra: a skip there would hide a broken install
        raise
    pytest.skip("the [hf] extra (transformers, optimum-onnx) is not installed", allow_module_level=True)

import torch

from agent.backends.contract import load_contract
from agent.cli import main
from compression.tasks.noise import urbansound
from compression.tasks.noise import huggingface as hf

from test_compress_pipeline import REPO

RECIPE = REPO / "compression" / "recipes" / "noise_hf.yaml"
# the model's classes in another order than the data's, to prove the adapter reorders them
MODEL_LABELS = list(reversed(urbansound.LABELS))


def _save_ast(path, labels=MODEL_LABELS, n_mels=64, max_length=400):
    torch.manual_seed(0)
    config = transformers.ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                    intermediate_size=64, num_mel_bins=n_mels, max_length=max_length,
                                    id2label=dict(enumerate(labels)),
                                    label2id={name: i for i, name in enumerate(labels)})
    transformers.ASTForAudioClassification(config).save_pretrained(path)
    transformers.ASTFeatureExtractor(num_mel_bins=n_mels, max_length=max_length).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def ast_dir(tmp_path_factory):
    return _save_ast(tmp_path_factory.mktemp("tiny-ast"))


@pytest.fixture(scope="module")
def clips(data_dir):
    root = urbansound.find_root(data_dir)
    waves, _, _ = urbansound.load_clips(urbansound.list_clips(root, folds=["fold2"])[:16], 16000, 4.0,
                                        progress=False)
    return waves


def test_the_extractor_becomes_our_log_mel_front_end(ast_dir):
    teacher = hf.load_teacher(ast_dir, urbansound.LABELS)
    fe = teacher.frontend
    # Kaldi fbank conventions: 25 ms / 10 ms at 16 kHz, FFT of the next power of two, bands from 20 Hz,
    # the float-epsilon log floor, and AST's (x - mean) / (2 std) as our (x + shift) / scale
    assert (fe["sample_rate"], fe["win_length"], fe["hop_length"], fe["n_fft"]) == (16000, 400, 160, 512)
    assert (fe["n_mels"], fe["fmin"], fe["fmax"], fe["center"]) == (64, 20.0, 8000.0, False)
    assert fe["norm_shift"] == pytest.approx(4.2677393) and fe["norm_scale"] == pytest.approx(2 * 4.5689974)


def test_our_front_end_feeds_the_teacher_what_its_extractor_would(ast_dir, clips, tmp_path):
    """Measured against the model as optimum exports it, run on the extractor's own features."""
    teacher = hf.load_teacher(ast_dir, urbansound.LABELS)
    check = hf.fidelity(teacher, hf.export_optimum(ast_dir, tmp_path / "onnx"), clips)
    assert check["clips"] == 16
    # Kaldi removes each frame's DC offset and we do not: only the lowest two bands differ visibly
    assert check["feature_mean_abs_diff"] < 0.005
    assert check["feature_max_abs_diff_above_band_1"] < 0.1 < check["feature_max_abs_diff"]
    assert check["max_abs_logit_diff"] < 0.05 and check["top1_agreement"] >= 0.9


def test_the_teacher_answers_in_the_order_of_the_data_labels(ast_dir, clips):
    teacher = hf.load_teacher(ast_dir, urbansound.LABELS)
    from agent.features.audio import LogMelParams, log_mel

    x = torch.from_numpy(np.stack([log_mel(w, LogMelParams.from_dict(teacher.frontend)) for w in clips[:4]])[:, None])
    with torch.inference_mode():
        ours = teacher.module(x)
        padded = torch.nn.functional.pad(x[:, 0].transpose(1, 2), (0, 0, 0, 400 - x.shape[3]),
                                         value=teacher.module.pad_value)
        raw = teacher.module.model(input_values=padded).logits
    for j, name in enumerate(urbansound.LABELS):
        assert torch.equal(ours[:, j], raw[:, MODEL_LABELS.index(name)]), name


def test_a_raw_waveform_model_is_refused_with_the_reason(tmp_path):
    config = transformers.Wav2Vec2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                         intermediate_size=32, conv_dim=(8, 8), conv_stride=(5, 2),
                                         conv_kernel=(10, 3), num_feat_extract_layers=2,
                                         id2label=dict(enumerate(urbansound.LABELS)))
    transformers.Wav2Vec2ForSequenceClassification(config).save_pretrained(tmp_path)
    transformers.Wav2Vec2FeatureExtractor().save_pretrained(tmp_path)
    with pytest.raises(hf.HuggingFaceTeacherError, match="Wav2Vec2FeatureExtractor is not a log-mel front-end"):
        hf.load_teacher(tmp_path, urbansound.LABELS)


def test_a_model_missing_one_of_the_data_classes_is_refused_naming_it(tmp_path):
    _save_ast(tmp_path, labels=[name for name in urbansound.LABELS if name != "siren"])
    with pytest.raises(hf.HuggingFaceTeacherError, match=r"no class \['siren'\]"):
        hf.load_teacher(tmp_path, urbansound.LABELS)


def test_a_folder_without_its_preprocessor_is_refused(ast_dir, tmp_path):
    (tmp_path / "config.json").write_text((ast_dir / "config.json").read_text())
    with pytest.raises(hf.HuggingFaceTeacherError, match="no preprocessor_config.json"):
        hf.load_teacher(tmp_path, urbansound.LABELS)


def test_a_huggingface_teacher_through_the_whole_chain(ast_dir, data_dir, tmp_path):
    """`roadside compress` with the committed template recipe and the folder as its teacher."""
    out, work = tmp_path / "out", tmp_path / "work"
    smoke = {"teacher.huggingface": str(ast_dir), "data.max_clips": 12, "data.calibration_clips": 8,
             "student.cnn_channels": "[16, 32]", "distil.epochs": 1, "distil.batch_size": 12,
             "prune.target_params": 3000, "prune.steps": 1, "prune.epochs_per_step": 1, "prune.final_epochs": 1,
             "gate.max_drop": 100, "gate.max_onnx_logit_diff": 0.01}
    args = [a for k, v in smoke.items() for a in ("--set", f"{k}={v}")]
    assert main(["compress", "--recipe", str(RECIPE), "--data", str(data_dir), "--out", str(out),
                 "--work", str(work), *args]) == 0
    report = json.loads((out / "report.json").read_text())
    assert list(report["stages"]) == ["teacher", "student", "pruned", "int8_cpu", "int8_tensorrt"]
    assert report["stages"]["teacher"]["frontend"]["fmin"] == 20.0  # the teacher's, mapped from its extractor
    assert report["stages"]["pruned"]["params"] <= 3000 < report["stages"]["student"]["params"]
    assert report["teacher_frontend_fidelity"]["clips"] == 12
    assert (work / "teacher_optimum" / "model.onnx").is_file()
    inputs = json.loads((out / "manifest.json").read_text())["inputs"]
    assert inputs["teacher"] == f"huggingface:{ast_dir.name}"
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= set(inputs["teacher_files"])
    contract = load_contract(out / "model.onnx")
    assert contract.labels == urbansound.LABELS and contract.frontend["fmin"] == 0.0  # the device's front-end
