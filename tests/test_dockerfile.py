"""Static checks of Dockerfile.jetson (there is no Docker engine and no Jetson here: nothing is built).

What is checked is what the device relies on: a pinned JetPack base chosen by a build
argument, the agent-only install (no torch, every dependency pinned for the Jetson's
Python), a non-root user, the state folder as a volume, a HEALTHCHECK that runs the real
``roadside health`` command on the file the agent writes by default, and ``roadside agent``
as the entrypoint, and no development tool in the image (the demo, its MQTT broker, tests, the
city side). Commands in the file are parsed with the CLI's own parser.
"""

from __future__ import annotations

import ast
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


DEV_TOOLS = ("roadside_demo", "fleet", "tests", "benchmarks", "scripts", ".ci", "runs")
NOT_ON_A_POLE = DEV_TOOLS + ("torch", "torchvision", "torch_pruning", "compression.tasks", "compression.pipeline")


def _copied(parsed) -> list[Path]:
    return [Path(s) for a in _all(parsed, "COPY") for s in a.split()[:-1] if not s.startswith("--")]


def _module_level_imports(path: Path) -> set[str]:
    """Modules a file imports when it is imported (not those imported inside a function)."""
    names = set()
    for node in ast.parse(path.read_text(), str(path)).body:
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_static_image_copies_no_development_tool(parsed):
    copied = _copied(parsed)
    assert Path(".") not in copied, "COPY . would put the whole checkout in the image"
    for src in copied:
        assert src.parts[0] not in DEV_TOOLS, f"the image copies {src}, a development tool"
    assert (REPO / "roadside_demo" / "run.py").is_file()  # the demo lives outside agent/ ...
    assert not list((REPO / "agent").glob("demo*.py")) and not (REPO / "agent" / "broker.py").exists()
    tree = [p for src in copied if (REPO / src).is_dir() for p in (REPO / src).rglob("*.py")]
    assert any(p.name == "cli.py" for p in tree)
    for py in tree:  # ... and nothing the image does copy needs it (or torch, or the city side) to import
        for name in _module_level_imports(py):
            assert not name.startswith(NOT_ON_A_POLE), f"{py.relative_to(REPO)} imports {name} at import time"


def test_static_demo_says_it_is_not_installed_where_it_is_missing(monkeypatch, capsys):
    import importlib.util

    from agent.cli import main

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "roadside_demo"
                        else find_spec(name, *a))
    assert main(["demo", "--duration", "1"]) == 2
    err = capsys.readouterr().err
    assert "development tool" in err and "pip install -e ." in err
