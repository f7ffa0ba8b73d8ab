"""Ed25519 signatures over artefact manifests: keys as files, a detached ``manifest.sig`` beside the manifest.

The manifest already lists every file's sha256 (``compression/manifest.py``), so signing the
manifest's exact bytes signs the whole artefact: ``verify_manifest`` checks the signature
against the trusted public keys, then every listed file's sha256, and refuses any file in
the folder the manifest does not list. Nothing is loaded before both checks pass.

Key files: the private key is PKCS#8 PEM (written 0600), the public key SubjectPublicKeyInfo
PEM. A key id is the first 16 hex of the sha256 of the raw 32-byte public key; the
signature file names the id so that several trusted keys (rotation) cost one check each.

``manifest.sig`` (JSON): ``{"alg": "ed25519", "key_id": "<16 hex>", "sig": "<base64 of 64 bytes>"}``.

The same keys sign two smaller things a command carries (``sign_bytes``/``verify_bytes``, a
bare base64 signature): a ``cmd/reload`` config text (its exact UTF-8 bytes) and a rollback
permission (``rollback_message``: task, the release rolled back from, the target model's sha256).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from ..hashing import sha256_file

SIG_NAME = "manifest.sig"
ALG = "ed25519"


class SignatureError(ValueError):
    """An artefact or key that must not be trusted; the message names the file and what was wrong."""


# ------------------------------------------------------------------------------------ keys

def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(private_path: Path | str, public_path: Path | str | None = None) -> tuple[Path, Path]:
    """Write a new key pair; the private key file is created 0600 and never overwritten."""
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_suffix(".pub")
    if private_path.exists():
        raise FileExistsError(f"{private_path} exists; refusing to overwrite a private key")
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    private_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public_path.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                          serialization.PublicFormat.SubjectPublicKeyInfo))
    return private_path, public_path


def load_private_key(path: Path | str) -> Ed25519PrivateKey:
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        # The exception text never contains key material; the path is enough to act on.
        raise SignatureError(f"{path}: not a readable unencrypted PEM private key ({type(e).__name__})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 private key ({type(key).__name__})")
    return key


def load_public_key(path: Path | str) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(Path(path).read_bytes())
    except (OSError, ValueError, TypeError) as e:
        raise SignatureError(f"{path}: not a readable PEM public key ({type(e).__name__}: {e})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError(f"{path}: not an Ed25519 public key ({type(key).__name__})")
    return key


# ------------------------------------------------------------------------------- manifests

def _read_manifest(manifest_path: Path) -> tuple[bytes, dict]:
    try:
        data = manifest_path.read_bytes()
        manifest = json.loads(data)
    except OSError as e:
        raise SignatureError(f"{manifest_path}: cannot read ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SignatureError(f"{manifest_path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        raise SignatureError(f"{manifest_path}: no 'files' table: a manifest must list every file's sha256")
    return data, manifest


def check_files(manifest_path: Path | str, manifest: dict | None = None, *, exclusive: bool = True) -> None:
    """Every file the manifest lists exists beside it with its sha256; with ``exclusive``, nothing else is there."""
    manifest_path = Path(manifest_path)
    if manifest is None:
        manifest = _read_manifest(manifest_path)[1]
    folder = manifest_path.parent
    for name, entry in manifest["files"].items():
        if not isinstance(name, str) or Path(name).name != name or name in (manifest_path.name, SIG_NAME):
            raise SignatureError(f"{manifest_path}: files.{name}: not a plain file name beside the manifest")
        expected = entry.get("sha256") if isinstance(entry, dict) else None
        path = folder / name
        if path.is_symlink():  # plain files only: a link could point at anything on the device
            raise SignatureError(f"{manifest_path}: files.{name}: a symbolic link, not a plain file")
        if not path.is_file():
            raise SignatureError(f"{manifest_path}: files.{name}: missing")
        actual = sha256_file(path)
        if actual != expected:
            raise SignatureError(f"{path}: sha256 {actual[:12]}... does not match the manifest's "
                                 f"{str(expected)[:12]}...: damaged or altered")
    if exclusive:
        listed = set(manifest["files"]) | {manifest_path.name, SIG_NAME}
        extra = sorted(p.name for p in folder.iterdir() if p.name not in listed)
        if extra:
            raise SignatureError(f"{folder}: {extra} not listed in the signed manifest")


def sign_manifest(manifest_path: Path | str, private_key_path: Path | str) -> Path:
    """Check the manifest's files, then write ``manifest.sig`` beside it (the signature of its exact bytes)."""
    manifest_path = Path(manifest_path)
    data, manifest = _read_manifest(manifest_path)
    check_files(manifest_path, manifest, exclusive=False)  # never sign a manifest that lies about its files
    key = load_private_key(private_key_path)
    sig = {"alg": ALG, "key_id": key_id(key.public_key()), "sig": base64.b64encode(key.sign(data)).decode()}
    out = manifest_path.parent / SIG_NAME
    out.write_text(json.dumps(sig) + "\n")
    return out


def _verify(data: bytes, sig_path: Path, public_keys: Iterable[Ed25519PublicKey]) -> str:
    if not sig_path.is_file():
        raise SignatureError(f"{sig_path.parent / 'manifest.json'}: unsigned (no {SIG_NAME} beside it)")
    try:
        sig_text = sig_path.read_bytes()
    except OSError as e:
        raise SignatureError(f"{sig_path}: cannot read ({e.strerror or e})") from None
    return _check(data, sig_text, public_keys, sig_path)


def _check(data: bytes, sig_text: bytes, public_keys: Iterable[Ed25519PublicKey], sig_path: Path | str) -> str:
    """The id of the trusted key whose signature ``sig_text`` (a manifest.sig's JSON) is over ``data``."""
    try:
        sig = json.loads(sig_text)
        if sig.get("alg") != ALG:
            raise SignatureError(f"{sig_path}: alg {sig.get('alg')!r}, expected {ALG!r}")
        raw = base64.b64decode(sig["sig"], validate=True)
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, AttributeError, binascii.Error) as e:
        raise SignatureError(f"{sig_path}: malformed signature file ({type(e).__name__})") from None
    keys = {key_id(k): k for k in public_keys}
    if not keys:
        raise SignatureError("no trusted public keys configured")
    # Try the named key first, then the others: a wrong key_id field must not bypass anything.
    for kid in sorted(keys, key=lambda k: k != sig.get("key_id")):
        try:
            keys[kid].verify(raw, data)
            return kid
        except InvalidSignature:
            continue
    raise SignatureError(f"{sig_path}: signature does not verify against any trusted key "
                         f"(trusted: {sorted(keys)}; signed by {str(sig.get('key_id'))[:16]!r})")


def verify_manifest_bytes(data: bytes, sig_text: bytes, public_keys: Iterable[Ed25519PublicKey],
                          where: str = "manifest.json") -> tuple[dict, str]:
    """A manifest still in memory (a bundle not yet unpacked): (manifest, signing key id) or ``SignatureError``.

    The signature is checked before the bytes are parsed: unsigned input is never even read as JSON.
    """
    kid = _check(data, sig_text, public_keys, SIG_NAME)
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise SignatureError(f"{where}: not valid JSON ({type(e).__name__})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict) or not manifest["files"]:
        raise SignatureError(f"{where}: no 'files' table: a manifest must list every file's sha256")
    return manifest, kid


@dataclass(frozen=True)
class Verified:
    manifest: dict
    key_id: str  # the trusted key that signed it
    folder: Path


def verify_manifest(manifest_path: Path | str, public_keys: Iterable[Ed25519PublicKey], *,
                    exclusive: bool = True) -> Verified:
    """Signature first, then every file's sha256 (the manifest is read once). ``SignatureError`` otherwise."""
    manifest_path = Path(manifest_path)
    data, manifest = _read_manifest(manifest_path)
    kid = _verify(data, manifest_path.parent / SIG_NAME, public_keys)
    check_files(manifest_path, manifest, exclusive=exclusive)
    return Verified(manifest, kid, manifest_path.parent)


# ----------------------------------------------------------------- signatures in commands

def sign_bytes(data: bytes, private_key_path: Path | str) -> str:
    """The base64 Ed25519 signature of ``data`` (a reload config's bytes, a rollback message)."""
    return base64.b64encode(load_private_key(private_key_path).sign(data)).decode()


def verify_bytes(data: bytes, sig_b64: str | None, public_keys: Iterable[Ed25519PublicKey], what: str) -> str:
    """The id of the trusted key that signed ``data``; ``SignatureError`` naming ``what`` otherwise."""
    keys = list(public_keys)
    if not keys:
        raise SignatureError(f"{what}: no trusted keys (updates.trusted_keys) to check its signature against")
    if not sig_b64:
        raise SignatureError(f"{what}: unsigned (a signature by a key in updates.trusted_keys is required)")
    try:
        raw = base64.b64decode(sig_b64, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{what}: the signature is not base64") from None
    for k in keys:
        try:
            k.verify(raw, data)
            return key_id(k)
        except InvalidSignature:
            continue
    raise SignatureError(f"{what}: signature does not verify against any trusted key")


def rollback_message(task: str, from_release: int, sha256: str) -> bytes:
    """What an operator signs to allow going back from release ``from_release`` to the model ``sha256``."""
    return f"roadside-rollback/1 task={task} from={int(from_release)} to={sha256.lower()}".encode()


SHADOW_ACTIONS = ("promote", "abort")


def shadow_message(action: str, task: str, sha256: str) -> bytes:
    """What an operator signs to ``promote`` or ``abort`` the candidate model ``sha256`` shadowing on ``task``.

    The action is part of the message so that an abort signature can never be replayed as a promote.
    """
    if action not in SHADOW_ACTIONS:
        raise ValueError(f"shadow action {action!r}: one of {SHADOW_ACTIONS}")
    return f"roadside-shadow:{action}:{task}:{sha256}".encode()
