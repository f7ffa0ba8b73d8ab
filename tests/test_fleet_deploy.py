"""The production examples in fleet/deploy/ are real configs: each is checked by the program that reads it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from agent.schema import ConfigError
from fleet import config
from fleet.servers.nats import NATS_SERVER, device_permissions
from fleet.servers.postgres import pg_bindir
from fleet_fixtures import _need
from tls_fixtures import Pki

DEPLOY = Path(__file__).resolve().parents[1] / "fleet" / "deploy"


def test_the_example_ingest_config_validates_and_a_typo_is_named_with_its_key(tmp_path):
    cfg = config.load(DEPLOY / "ingest.yaml")
    assert len(cfg.nats.servers) == 3 and cfg.ingest.batch == 500 and cfg.db.sslmode == "verify-full"
    bad = tmp_path / "ingest.yaml"
    bad.write_text((DEPLOY / "ingest.yaml").read_text().replace("  batch: 500", "  bacth: 500"))
    with pytest.raises(ConfigError) as e:
        config.load(bad)
    assert "ingest.bacth" in str(e.value)


def test_the_example_nats_node_config_passes_nats_server_t(tmp_path):
    if not Path(NATS_SERVER).is_file():
        _need(f"nats-server not installed ({NATS_SERVER})")
    pki = Pki(tmp_path / "pki", devices=())
    cert, key = pki.server
    text = (DEPLOY / "nats-city-1.conf").read_text()
    text = (text.replace("/etc/nats/tls/city-1.crt", str(cert)).replace("/etc/nats/tls/city-1.key", str(key))
            .replace("/etc/nats/tls/city-ca.pem", str(pki.ca.pem)).replace("/var/lib/nats", str(tmp_path / "js")))
    (tmp_path / "city.conf").write_text(text)
    shutil.copy(DEPLOY / "auth.conf", tmp_path / "auth.conf")
    r = subprocess.run([NATS_SERVER, "-t", "-c", str(tmp_path / "city.conf")], capture_output=True, text=True,
                       timeout=30)
    assert r.returncode == 0, r.stdout + r.stderr


def test_the_example_pole_user_has_exactly_the_permissions_the_stack_gives_a_pole():
    line = next(x for x in (DEPLOY / "auth.conf").read_text().splitlines() if "permissions:" in x)
    perms = json.loads(re.search(r"permissions: (\{.*\})\}", line).group(1))
    assert perms == device_permissions("orin-0001", "high-st")


@pytest.mark.parametrize("name", ["postgresql-primary.conf", "postgresql-replica.conf"])
def test_the_example_postgresql_settings_are_all_real_settings(name):
    try:
        bindir = pg_bindir()
    except FileNotFoundError as e:
        _need(str(e))
    known = {line.split("\t")[0] for line in subprocess.run(
        [str(bindir / "postgres"), "--describe-config"], capture_output=True, text=True, check=True).stdout.splitlines()}
    settings = [line.split("=")[0].strip() for line in (DEPLOY / name).read_text().splitlines()
                if line.strip() and not line.lstrip().startswith("#")]
    assert settings and [s for s in settings if s not in known] == []
