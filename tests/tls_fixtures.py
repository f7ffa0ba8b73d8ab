"""A test PKI (generated with ``cryptography`` in the test) and a mosquitto with a mutual-TLS listener and an ACL.

``Pki``: the city CA, a second unrelated CA (the "wrong" one), the broker's certificate for
127.0.0.1/localhost, and client certificates whose CN is a device id (or ``admin``).

``TlsBroker``: one mosquitto, two listeners (``per_listener_settings``):
- TLS: client certificate required, its CN is the MQTT user name, and the ACL lets a
  device read and write only ``roadside/v1/+/<its id>/#`` (``admin`` may do anything);
- plain, anonymous, no ACL: where the test's own observer subscribes.
Started on free 127.0.0.1 ports, stopped by PID (``agent_fixtures.Broker`` does the process work).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from agent_fixtures import Broker, _free_port

ACL = """# Devices authenticate by certificate; its CN is the user name (use_identity_as_username).
# A device reads and writes only under its own id, whatever site it claims.
pattern readwrite roadside/v1/+/%u/#

user admin
topic readwrite #
"""


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write_key(key, path: Path) -> Path:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o600)
    return path


class Ca:
    def __init__(self, folder: Path, cn: str):
        self.folder = folder
        self.key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        self.cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
                     .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                     .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=2))
                     .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                     .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                  content_commitment=False, key_encipherment=False,
                                                  data_encipherment=False, key_agreement=False,
                                                  encipher_only=False, decipher_only=False), critical=True)
                     .sign(self.key, hashes.SHA256()))
        self.pem = folder / f"{cn}.pem"
        self.pem.write_bytes(self.cert.public_bytes(serialization.Encoding.PEM))

    def issue(self, cn: str, server: bool = False) -> tuple[Path, Path]:
        """(certificate, key) files for ``cn``; a server certificate names 127.0.0.1 and localhost."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.timezone.utc)
        b = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(self.cert.subject)
             .public_key(key.public_key()).serial_number(x509.random_serial_number())
             .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                   else ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False))
        if server:
            b = b.add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                             x509.DNSName("localhost")]), critical=False)
        cert = b.sign(self.key, hashes.SHA256())
        cert_path = self.folder / f"{cn}.crt"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cert_path, _write_key(key, self.folder / f"{cn}.key")


class Pki:
    def __init__(self, folder: Path, devices: tuple[str, ...] = ("dev-a", "dev-b")):
        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.ca = Ca(folder, "city-ca")
        self.wrong_ca = Ca(folder, "other-ca")
        self.server = self.ca.issue("broker", server=True)
        self.clients = {d: self.ca.issue(d) for d in (*devices, "admin")}


class TlsBroker(Broker):
    def __init__(self, folder: Path, pki: Pki):
        self.pki = pki
        self.tls_port = _free_port()
        super().__init__(folder)  # writes the plain config and starts; we rewrite and restart below
        self.stop()
        acl = folder / "acl"
        acl.write_text(ACL)
        cert, key = pki.server
        text = self.conf.read_text().replace(f"listener {self.port} 127.0.0.1\nallow_anonymous true\n", "")
        self.conf.write_text(
            "per_listener_settings true\n" + text +
            f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
            f"listener {self.tls_port} 127.0.0.1\ncafile {pki.ca.pem}\ncertfile {cert}\nkeyfile {key}\n"
            f"require_certificate true\nuse_identity_as_username true\nallow_anonymous false\nacl_file {acl}\n")
        self.start()
