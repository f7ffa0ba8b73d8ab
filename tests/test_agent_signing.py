"""Ed25519 signing of artefact manifests (agent/control/signing.py) and the operator commands keygen / sign.

An artefact here is what compression/manifest.py writes: files plus a manifest listing
each one's sha256. Signing the manifest's bytes signs every file through those hashes.
"""

from __future__ import annotations

import io
import json
import stat
import tarfile

import pytest

from agent.cli import main
from agent.control.bundle_io import UpdateError, make_bundle, unpack
from agent.control.signing import SIG_NAME, SignatureError, load_public_key, sign_manifest, verify_manifest
from compression.manifest import write_manifest
from ops_fixtures import keypair


@pytest.fixture
def artefact(tmp_path):
    folder = tmp_path / "artefact"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"\x08\x07model bytes" * 100)
    (folder / "report.json").write_text('{"accuracy": 0.5}')
    write_manifest(folder, stage="test", files=[folder / "model.onnx", folder / "report.json"], inputs={},
                   recipe={}, data_lists={}, extra={"task": "noise"})
    return folder / "manifest.json"


@pytest.fixture
def keys(tmp_path):
    return keypair(tmp_path / "keys")


def test_keygen_writes_a_private_key_only_its_owner_reads_and_never_overwrites(tmp_path, keys):
    private, public = keys
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    load_public_key(public)
    assert main(["keygen", "--out", str(private)]) == 2  # exists: refused, key kept
    assert main(["keygen", "--out", str(tmp_path / "other.key")]) == 0
    assert (tmp_path / "other.pub").is_file()


def test_signed_artefact_verifies(artefact, keys):
    sign_manifest(artefact, keys[0])
    v = verify_manifest(artefact, [load_public_key(keys[1])])
    assert v.manifest["task"] == "noise" and len(v.key_id) == 16


@pytest.mark.parametrize("damage, expected", [
    (lambda m: (m.parent / "model.onnx").write_bytes(b"swapped"), "model.onnx: sha256"),
    (lambda m: m.write_text(m.read_text().replace('"noise"', '"vehicles"')), "does not verify"),
    (lambda m: (m.parent / SIG_NAME).unlink(), "unsigned"),
    (lambda m: (m.parent / "extra.py").write_text("import os"), "not listed in the signed manifest"),
    (lambda m: (m.parent / SIG_NAME).write_text('{"alg": "rsa", "sig": ""}'), "alg 'rsa'"),
    (lambda m: (m.parent / "report.json").unlink(), "files.report.json: missing"),
], ids=["file-swapped", "manifest-edited", "unsigned", "unlisted-file", "other-algorithm", "file-missing"])
def test_a_damaged_artefact_is_refused_naming_what_is_wrong(artefact, keys, damage, expected):
    sign_manifest(artefact, keys[0])
    damage(artefact)
    with pytest.raises(SignatureError, match=expected):
        verify_manifest(artefact, [load_public_key(keys[1])])


def test_a_signature_by_an_untrusted_key_is_refused_even_when_it_claims_a_trusted_id(artefact, keys, tmp_path):
    trusted = load_public_key(keys[1])
    rogue_private, _ = keypair(tmp_path / "rogue", "rogue")
    sign_manifest(artefact, rogue_private)
    sig = json.loads((artefact.parent / SIG_NAME).read_text())
    from agent.control.signing import key_id

    sig["key_id"] = key_id(trusted)  # lying about the signer changes nothing
    (artefact.parent / SIG_NAME).write_text(json.dumps(sig))
    with pytest.raises(SignatureError, match="does not verify against any trusted key"):
        verify_manifest(artefact, [trusted])


def test_key_rotation_any_trusted_key_verifies(artefact, keys, tmp_path):
    old_private, old_public = keypair(tmp_path / "old", "old")
    sign_manifest(artefact, old_private)
    assert verify_manifest(artefact, [load_public_key(keys[1]), load_public_key(old_public)])


def test_sign_refuses_a_manifest_that_lies_about_its_files(artefact, keys):
    (artefact.parent / "model.onnx").write_bytes(b"changed after the manifest was written")
    with pytest.raises(SignatureError, match="model.onnx"):
        sign_manifest(artefact, keys[0])
    assert not (artefact.parent / SIG_NAME).exists()


def test_sign_command_writes_signature_and_bundle(artefact, keys, tmp_path, capsys):
    bundle = tmp_path / "noise.tar"
    assert main(["sign", str(artefact), "--key", str(keys[0]), "--verify-with", str(keys[1]),
                 "--bundle", str(bundle)]) == 0
    with tarfile.open(bundle) as tar:
        assert sorted(tar.getnames()) == ["manifest.json", "manifest.sig", "model.onnx", "report.json"]
    _, other = keypair(tmp_path / "other", "other")
    assert main(["sign", str(artefact), "--key", str(keys[0]), "--verify-with", str(other)]) == 3
    assert "does not verify" in capsys.readouterr().err


def _tar(members: dict[str, bytes], kind=tarfile.REGTYPE) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.type = len(data), kind
            if kind == tarfile.SYMTYPE:
                info.size, info.linkname = 0, "/etc/passwd"
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


@pytest.mark.parametrize("data, expected", [
    (_tar({"../evil": b"x"}), "not a plain file name"),
    (_tar({"sub/model.onnx": b"x"}), "not a plain file name"),
    (_tar({"link": b""}, tarfile.SYMTYPE), "not a plain file name"),
    (b"not a tar at all", "not a tar archive"),
], ids=["parent-path", "sub-folder", "symlink", "garbage"])
def test_a_bundle_cannot_write_outside_its_folder(tmp_path, data, expected, keys):
    with pytest.raises(UpdateError, match=expected):  # refused on its structure, before any signature check
        unpack(data, tmp_path / "staging", [load_public_key(keys[1])])
    assert not (tmp_path / "evil").exists()


def test_bundle_round_trip(artefact, keys, tmp_path):
    sign_manifest(artefact, keys[0])
    unpack(make_bundle(artefact.parent), tmp_path / "out", [load_public_key(keys[1])])
    assert verify_manifest(tmp_path / "out" / "manifest.json", [load_public_key(keys[1])])
