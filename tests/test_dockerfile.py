"""Static checks of Dockerfile.jetson (there is no Docker engine and no Jetson here: nothing is built).

What is checked is what the device relies on: a pinned JetPack base chosen by a build
argument, the agent-only install (no torch, every dependency pinned for the Jetson's
Python), a non-root user, the state folder as a volume, a HEALTHCHECK that runs the real
``roadside health`` command on the file the agent writes by default, and ``roadside agent``
as the entrypoint. Commands in the file are parsed with the CLI's own parser.
"""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest

from agent.cli import build_parser
from agent.config import DeviceSection

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile.jetson"


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        current += " " + stripped.rstrip("\\").strip() if current else stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, args = current.partition(" ")
            out.append((word.upper(), args.strip()))
            current = ""
    return out


@pytest.fixture(scope="module")
def parsed() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def _all(parsed, name: str) -> list[str]:
    return [a for i, a in parsed if i == name]


def _exec_form(args: str) -> list[str]:
    assert args.startswith("["), f"not exec form (JSON array): {args}"
    return json.loads(args)


def test_static_base_image_is_pinned_by_a_build_argument(parsed):
    names = [i for i, _ in parsed]
    first_from = names.index("FROM")
    args = dict(a.split("=", 1) for i, a in parsed[:first_from] if i == "ARG" and "=" in a)
    image = _all(parsed, "FROM")[0]
    m = re.fullmatch(r"nvcr\.io/nvidia/l4t-(jetpack|tensorrt):\$\{(\w+)\}", image)
    assert m, f"base is not an NGC L4T image chosen by an ARG: {image}"
    tag = args.get(m.group(2))
    assert tag and re.fullmatch(r"r\d+\.\d+\.\d+", tag), f"default {m.group(2)}={tag!r} is not a pinned L4T release"
    assert len(_all(parsed, "FROM")) == 1


def test_static_installs_the_agent_only_with_every_dependency_pinned(parsed):
    runs = " ".join(_all(parsed, "RUN"))
    installs = [seg for seg in re.split(r"&&|;", runs) if "pip install" in seg]
    assert installs and not any("torch" in seg or "[" in seg for seg in installs), installs  # no torch, no extras
    assert re.search(r"pip install --no-deps /src", runs) and "-r /tmp/requirements-jetson.txt" in runs
    assert any(a.startswith("requirements-jetson.txt ") for a in _all(parsed, "COPY"))
    lock = {}
    for line in (REPO / "requirements-jetson.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"requirements-jetson.txt: {line!r} is not pinned with =="
            lock[name.lower().replace("_", "-")] = version
    assert "torch" not in lock
    base = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    for dep in base:  # a dependency added to the device install must be added to the Jetson lock too
        name = re.split(r"[=<>!~\[ ;]", dep, 1)[0].lower().replace("_", "-")
        assert name in lock, f"pyproject dependency {dep!r} is not pinned in requirements-jetson.txt"
    for src in (a.split()[:-1] for a in _all(parsed, "COPY")):
        for s in src:
            assert (REPO / s).exists(), f"COPY source {s} does not exist in the repository"


def test_static_runs_as_a_non_root_user(parsed):
    users = _all(parsed, "USER")
    assert users, "no USER: the agent would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert re.search(rf"useradd [^;&]*\b{user}\b", " ".join(_all(parsed, "RUN")))
    names = [i for i, _ in parsed]
    assert names.index("USER") < names.index("ENTRYPOINT")


def test_static_state_folder_is_a_volume_and_is_the_agents_default(parsed):
    volumes = [v for a in _all(parsed, "VOLUME") for v in (json.loads(a) if a.startswith("[") else a.split())]
    default_state = str(DeviceSection.model_fields["state_dir"].default)
    assert default_state in volumes  # outbox, engine cache (engines/), model updates, health file


def test_static_healthcheck_runs_roadside_health_on_the_default_health_file(parsed):
    hc = _all(parsed, "HEALTHCHECK")
    assert len(hc) == 1
    options, _, command = hc[0].partition("CMD ")
    assert re.search(r"--interval=\d+s", options) and re.search(r"--start-period=\d+s", options)
    argv = _exec_form(command.strip())
    assert argv[0] == "roadside"
    args = build_parser().parse_args(argv[1:])  # the real subcommand and options, or SystemExit
    assert args.command == "health"
    default_state = Path(str(DeviceSection.model_fields["state_dir"].default))
    assert Path(args.file) == default_state / "health.json"  # where the agent writes it by default


def test_static_entrypoint_is_roadside_agent(parsed):
    entry = _exec_form(_all(parsed, "ENTRYPOINT")[-1])
    cmd = _exec_form(_all(parsed, "CMD")[-1])
    assert entry == ["roadside", "agent"]
    args = build_parser().parse_args(entry[1:] + cmd)
    assert args.command == "agent"
