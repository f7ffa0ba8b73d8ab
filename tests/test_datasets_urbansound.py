"""UrbanSound8K listing and loading, and where the data directory is looked for."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile as sf

from compression.datasets import datadir

from compression.tasks.noise import urbansound
from compression.datasets.datadir import DataDirError, resolve_data_dir
from compression.tasks.noise.urbansound import (LABELS, Clip, ClipError, UrbanSoundError, available_folds,
                                             data_list_sha256, list_clips, load_clip, load_clips)

SR = 16000


def _write(path, x, sr=SR, fmt=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), x, sr, format=fmt)
    return path


@pytest.fixture
def clipdir(tmp_path):
    """A tiny UrbanSound-like folder with clips, docs, and two misnamed files."""
    root = tmp_path / "urbansound8k"
    tone = (0.1 * np.sin(2 * np.pi * 440 * np.arange(4 * SR) / SR)).astype(np.float32)
    _write(root / "fold1" / "100-3-0-1.flac", tone)
    _write(root / "fold1" / "200-8-1-0.wav", tone)
    _write(root / "fold2" / "300-0-0-0.flac", tone)
    _write(root / "400-1-0-0.flac", tone)  # directly in the root: fold ""
    _write(root / "fold1" / "notes.flac", tone)  # not an UrbanSound name
    _write(root / "fold1" / "999-12-0-0.flac", tone)  # class 12 does not exist
    (root / "README.md").write_text("docs are not clips")
    (root / "fold1" / ".DS_Store").write_bytes(b"\0")
    return root


@pytest.fixture
def fresh_fix_log(monkeypatch):
    """Each kind of fix is logged once per process; give each test its own process state."""
    monkeypatch.setattr(urbansound, "_LOGGED_FIXES", set())


def test_labels_are_the_ten_classes_in_class_id_order():
    assert len(LABELS) == 10
    assert (LABELS[0], LABELS[1], LABELS[8], LABELS[9]) == ("air_conditioner", "car_horn", "siren", "street_music")


def test_list_clips_parses_names_and_folds_and_counts_misnamed_files(clipdir, caplog):
    with caplog.at_level(logging.WARNING, logger=urbansound.__name__):
        clips = list_clips(clipdir)
    assert [(c.fold, c.path.name, c.label, c.fsid) for c in clips] == [
        ("", "400-1-0-0.flac", 1, "400"),
        ("fold1", "100-3-0-1.flac", 3, "100"),
        ("fold1", "200-8-1-0.wav", 8, "200"),
        ("fold2", "300-0-0-0.flac", 0, "300"),
    ]
    assert sorted(p.name for p in clips.skipped) == ["999-12-0-0.flac", "notes.flac"]
    assert clips.n_skipped == 2
    assert "skipped 2 file(s)" in caplog.text


def test_list_clips_filters_by_fold_and_names_an_unknown_fold(clipdir):
    assert [c.path.name for c in list_clips(clipdir, folds=["fold2"])] == ["300-0-0-0.flac"]
    assert {c.fold for c in list_clips(clipdir, folds=["fold1", ""])} == {"fold1", ""}
    with pytest.raises(UrbanSoundError, match=r"fold\(s\) \['fold9'\] not found.*available: \['', 'fold1', 'fold2'\]"):
        list_clips(clipdir, folds=["fold9"])


def test_available_folds_sorts_naturally(tmp_path):
    for fold in ("fold10", "fold2", "fold1"):
        _write(tmp_path / fold / "1-0-0-0.flac", np.zeros(SR, np.float32))
    (tmp_path / "empty_fold").mkdir()
    assert available_folds(tmp_path) == ["fold1", "fold2", "fold10"]
    assert [c.fold for c in list_clips(tmp_path)] == ["fold1", "fold2", "fold10"]


def test_missing_clip_folder_is_named(tmp_path):
    with pytest.raises(UrbanSoundError, match="nowhere"):
        list_clips(tmp_path / "nowhere")


def test_44k_stereo_5s_wav_is_resampled_mixed_and_cropped(tmp_path, caplog, fresh_fix_log):
    sr = 44100
    t = np.arange(5 * sr) / sr
    left = 0.5 * np.sin(2 * np.pi * 1000 * t)
    stereo = np.stack([left, np.zeros_like(left)], axis=1)  # the mix is half the left channel
    path = _write(tmp_path / "1-0-0-0.wav", stereo, sr=sr)
    with caplog.at_level(logging.WARNING, logger=urbansound.__name__):
        x = load_clip(path, sample_rate=SR, seconds=4.0)
        load_clip(path, sample_rate=SR, seconds=4.0)
    assert x.dtype == np.float32 and x.shape == (4 * SR,)
    spectrum = np.abs(np.fft.rfft(x))
    assert np.argmax(spectrum) * SR / x.size == pytest.approx(1000, abs=1)
    assert np.max(np.abs(x[SR:-SR])) == pytest.approx(0.25, abs=0.01)  # mono = mean of channels
    for kind in ("downmix", "resample", "crop"):
        assert sum(r.getMessage().startswith(kind) for r in caplog.records) == 1, kind
    assert "44100 Hz -> 16000 Hz" in caplog.text


def test_short_clip_is_repeated_to_fill_not_zero_padded(tmp_path, fresh_fix_log):
    one_second = np.linspace(-0.5, 0.5, SR, dtype=np.float32)
    x = load_clip(_write(tmp_path / "1-0-0-0.flac", one_second), sample_rate=SR, seconds=2.5)
    assert x.shape == (int(2.5 * SR),)
    np.testing.assert_allclose(x[SR:2 * SR], x[:SR])
    np.testing.assert_allclose(x[2 * SR:], x[:SR // 2])


def test_clip_already_in_shape_is_returned_unchanged(tmp_path, caplog, fresh_fix_log):
    noise = np.random.default_rng(0).uniform(-0.5, 0.5, 4 * SR).astype(np.float32)
    path = _write(tmp_path / "1-0-0-0.wav", noise, fmt="WAV")
    with caplog.at_level(logging.WARNING, logger=urbansound.__name__):
        x = load_clip(path)
    np.testing.assert_allclose(x, noise, atol=1 / 32768)  # 16-bit PCM
    assert caplog.records == []


def test_corrupt_clip_raises_with_path_and_is_skipped_and_counted_in_bulk(clipdir):
    bad = clipdir / "fold1" / "500-2-0-0.flac"
    bad.write_bytes(b"fLaC but not really a flac file")
    with pytest.raises(ClipError, match=r"cannot load clip .*500-2-0-0\.flac: ") as err:
        load_clip(bad)
    assert err.value.path == bad and err.value.reason

    clips = list_clips(clipdir)
    x, kept, n_skipped = load_clips(clips, progress=False)
    assert n_skipped == 1
    assert bad not in [c.path for c in kept] and len(kept) == len(clips) - 1
    assert x.shape == (len(kept), 4 * SR) and x.dtype == np.float32


def test_load_clips_of_nothing_has_the_right_shape():
    x, kept, n = load_clips([], sample_rate=SR, seconds=1.0, progress=False)
    assert x.shape == (0, SR) and kept == [] and n == 0


def test_data_list_hash_ignores_order_but_not_content(clipdir):
    clips = list_clips(clipdir)
    h = data_list_sha256(clips, clipdir)
    assert len(h) == 64
    assert data_list_sha256(list(reversed(clips)), clipdir) == h
    relabelled = [Clip(c.path, c.fold, (c.label + 1) % 10, c.fsid) for c in clips]
    assert data_list_sha256(relabelled, clipdir) != h
    assert data_list_sha256(clips[:-1], clipdir) != h
    # Relative paths: the same list under another mount point hashes the same.
    moved = clipdir.rename(clipdir.parent / "elsewhere")
    assert data_list_sha256(list_clips(moved), moved) == h


def test_data_list_hash_refuses_a_clip_outside_the_root(clipdir, tmp_path):
    outsider = Clip(tmp_path / "x" / "1-0-0-0.flac", "", 0, "1")
    with pytest.raises(UrbanSoundError, match="not under the data root"):
        data_list_sha256([outsider], clipdir / "fold1")


# --- where the data directory is looked for -------------------------------------------


def test_wrong_data_dir_error_lists_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.delenv("ROADSIDE_DATA", raising=False)
    wrong = tmp_path / "empty"
    wrong.mkdir()
    with pytest.raises(DataDirError) as err:
        resolve_data_dir(wrong, "urbansound8k")
    msg = str(err.value)
    assert isinstance(err.value, FileNotFoundError)
    assert f"{wrong / 'urbansound8k'} (no urbansound8k/ folder there)" in msg
    assert f"{wrong} (not itself a urbansound8k folder either)" in msg
    with pytest.raises(DataDirError, match="does not exist"):
        resolve_data_dir(tmp_path / "typo")


def test_nothing_given_and_no_default_lists_all_three_sources(tmp_path, monkeypatch):
    monkeypatch.delenv("ROADSIDE_DATA", raising=False)
    monkeypatch.setattr(datadir, "DEFAULT_DATA", tmp_path / "shared" / "data")
    with pytest.raises(DataDirError) as err:
        resolve_data_dir(None, "vehicles")
    msg = str(err.value)
    assert "argument: not given" in msg and "$ROADSIDE_DATA: not set" in msg
    assert str(tmp_path / "shared" / "data") in msg and "does not exist" in msg


def test_env_var_is_used_and_is_not_silently_bypassed(tmp_path, monkeypatch, clipdir):
    monkeypatch.setenv("ROADSIDE_DATA", str(clipdir.parent))
    assert resolve_data_dir(None, "urbansound8k") == clipdir.resolve()
    monkeypatch.setenv("ROADSIDE_DATA", str(tmp_path / "stale"))
    with pytest.raises(DataDirError, match=r"\$ROADSIDE_DATA: .*stale \(does not exist\)"):
        resolve_data_dir(None, "urbansound8k")
    # An explicit argument wins over the environment.
    assert resolve_data_dir(clipdir.parent, "urbansound8k") == clipdir.resolve()


def test_data_root_or_the_clip_folder_itself_are_both_accepted(tmp_path, monkeypatch):
    monkeypatch.delenv("ROADSIDE_DATA", raising=False)
    clips = tmp_path / "my_clips"  # not named urbansound8k, but holds fold folders
    _write(clips / "fold1" / "1-0-0-0.flac", np.zeros(SR, np.float32))
    assert urbansound.find_root(clips) == clips.resolve()
    named = tmp_path / "data" / "urbansound8k"
    named.mkdir(parents=True)
    assert urbansound.find_root(tmp_path / "data") == named.resolve()
    assert urbansound.find_root(named) == named.resolve()


def test_recordings_are_dealt_whole_into_parts_with_every_class_in_each(tmp_path):
    """What out-of-fold teachers rely on: a recording's slices stay in one part, the parts cover every
    clip, each class is spread over the parts, and the same seed deals the same way."""
    clips = [Clip(tmp_path / f"{fsid}-{label}-0-{s}.flac", "fold1", label, str(fsid))
             for label in range(3) for fsid in range(100 * label, 100 * label + 7) for s in range(1 + fsid % 4)]
    part = urbansound.deal_recordings(clips, 3, seed=0)
    assert set(part) == {0, 1, 2}
    for fsid in {c.fsid for c in clips}:
        assert len({p for c, p in zip(clips, part) if c.fsid == fsid}) == 1
    for label in range(3):
        recordings = [sorted({c.fsid for c, p in zip(clips, part) if c.label == label and p == k}) for k in range(3)]
        assert sorted(len(r) for r in recordings) == [2, 2, 3]  # 7 recordings: as even as 3 parts allow
    assert urbansound.deal_recordings(clips, 3, seed=0) == part
    assert urbansound.deal_recordings(clips, 3, seed=1) != part


# --- the real data --------------------------------------------------------------------


def test_real_folds_have_the_documented_clip_counts_and_all_classes(data_dir):
    """What the data README promises, whichever folds have arrived: folds 1 and 2 whole (873 and 888
    clips, every class), any further fold non-empty and at most the published fold size, every clip
    readable by name, and no recording split across two folds (which keeps fold splits leak-free)."""
    root = urbansound.find_root(data_dir)
    assert urbansound.find_root(root) == root
    folds = available_folds(root)
    assert folds[:2] == ["fold1", "fold2"] and all(f.startswith("fold") for f in folds)
    clips = list_clips(root)
    assert clips.n_skipped == 0
    by_fold = {fold: list_clips(root, folds=[fold]) for fold in folds}
    assert sum(len(c) for c in by_fold.values()) == len(clips)
    for fold, n in (("fold1", 873), ("fold2", 888)):
        assert len(by_fold[fold]) == n
        assert {c.label for c in by_fold[fold]} == set(range(10))
    assert all(0 < len(by_fold[f]) <= 990 for f in folds[2:])  # the largest UrbanSound8K fold has 990 clips
    fsids = {fold: {c.fsid for c in in_fold} for fold, in_fold in by_fold.items()}
    for i, a in enumerate(folds):
        for b in folds[i + 1:]:
            assert not fsids[a] & fsids[b], (a, b)


def test_real_clips_load_without_any_fix(data_dir, caplog, fresh_fix_log):
    root = urbansound.find_root(data_dir)
    sample = list_clips(root)[::60]
    with caplog.at_level(logging.WARNING, logger=urbansound.__name__):
        x, kept, n_skipped = load_clips(sample, sample_rate=SR, seconds=4.0, progress=False)
    assert n_skipped == 0 and kept == list(sample)
    assert x.shape == (len(sample), 4 * SR)
    assert np.all(np.abs(x) <= 1.0) and np.all(x.std(axis=1) > 0)
    assert caplog.records == []  # 4.0 s, mono, 16 kHz: nothing to resample, mix, crop or pad
