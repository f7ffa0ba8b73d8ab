"""Live reload (``cmd/reload`` and SIGHUP): a new config is validated whole before anything changes.

Validation is everything a start would check: the schema (``load_config``: every problem
with its line and dotted key), the files it names (certificates, keys, passwords:
``config.preflight``), and every task it configures, built beside the running ones (model
contract, front-end, rule classes, dry run, smoke inference). Any failure: the command is
answered ``refused`` with the reason and the running config stays.

A reload is a way in, so it is held to what a model update is held to:

- ``cmd/reload`` with a ``config`` (YAML text) must carry ``sig``, an Ed25519 signature of
  the text's UTF-8 bytes by a key the running agent already trusts (``updates.trusted_keys``,
  as loaded at start: a reload never re-reads the key files). No trusted keys: refused.
- No reload (signed, re-read file or SIGHUP) may change ``updates.trusted_keys``: new keys
  take a restart with a new local file, so a stolen broker cannot bring its own key.
- Every path in a remote config either is the running config's value for the same key or
  lies under ``device.state_dir`` (symbolic links followed); the files the agent writes
  (``health.file``, ``outbox.path``) never name the config, a key, the models or each other.
  The local file (re-read without ``config``, or SIGHUP) is the operator's and may name any path.

A valid config is applied in place when only ``tasks``, ``level``, ``health``,
``updates``, ``device.timezone``/``time_quality``/``max_sensors`` or ``uplink.heartbeat_s``
changed: unchanged tasks keep their state, changed ones are swapped in one assignment
(timers such as the heartbeat are rescheduled). Anything else (identity, brokers, sources,
outbox) restarts the agent's parts in-process with the new config (a new boot number; the
outbox carries everything over).

A remote ``config`` that passes everything atomically replaces the config file, so the
applied config survives a restart; a config file that cannot be written refuses the command.
An agent started from a signed bundle (``roadside agent --bundle``) checks the whole bundle
again before it reads the config, and refuses inline text: its config changes only by a new
signed bundle. Who may send commands is the broker's ACL (docs/mqtt.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from pydantic import BaseModel, Field

from ..config import AgentConfig, config_hash, load_config, preflight, resolve_files
from ..schema import ConfigError, StrictModel, load_text
from .commands import ID_PATTERN, Refused, register
from .signing import SignatureError, verify_bytes
from .store import ModelStore

if TYPE_CHECKING:
    from .host import ControlHost

# Changes that the running parts can take without reconnecting anything.
HOT_SECTIONS = {"tasks", "level", "health", "updates"}
HOT_KEYS = {"device": {"timezone", "time_quality", "max_sensors"}, "uplink": {"heartbeat_s"}}
WRITTEN = ("health.file", "outbox.path")  # files the agent writes: never onto anything else


class ReloadCommand(StrictModel):
    id: str = Field(pattern=ID_PATTERN)
    config: str | None = Field(None, description="a whole new config (YAML text); absent: re-read the config file")
    sig: str | None = Field(None, max_length=200, description="base64 Ed25519 signature of the config text's UTF-8 "
                            "bytes by a key in updates.trusted_keys (required with config)")


def restart_keys(old: AgentConfig, new: AgentConfig) -> list[str]:
    """Dotted keys whose change needs the connections remade (empty: can be applied in place)."""
    out = []
    for section in type(new).model_fields:
        a, b = getattr(old, section), getattr(new, section)
        if a == b or section in HOT_SECTIONS:
            continue
        if section in HOT_KEYS and a is not None and b is not None:
            out += [f"{section}.{k}" for k in type(b).model_fields
                    if k not in HOT_KEYS[section] and getattr(a, k) != getattr(b, k)]
        else:
            out.append(section)
    return out


# -------------------------------------------------------------------------- reading

def _read(host: "ControlHost", text: str | None, sig: str | None) -> AgentConfig:
    """The new config: the file read again, or the remote text once its signature verifies."""
    path = host.config_path
    if path is None:
        raise Refused("the agent was not started from a config file", "config")
    if host.verify_source is not None:  # a signed bundle: its config is read only after its check passes again
        if text is not None:
            raise Refused("this agent runs a signed bundle: its config changes by installing a new bundle "
                          "(roadside flash), not by cmd/reload text", "config")
        try:
            host.verify_source()
        except ValueError as e:  # BundleError
            raise Refused(f"bundle: {e}", "verify") from None
    try:
        if text is None:
            return load_config(path)
        try:  # before the text is even parsed: an unsigned text is not ours to read
            verify_bytes(text.encode("utf-8", "surrogatepass"), sig, host.installed.keys, "cmd/reload config")
        except SignatureError as e:
            raise Refused(str(e), "verify") from None
        return load_text(text, AgentConfig, "cmd/reload config")
    except ConfigError as e:
        raise Refused("; ".join(e.problems), "validate") from None


def _paths(obj, prefix: str = "") -> Iterator[tuple[str, Path]]:
    """(dotted key, path) of every path in a config, as written."""
    if isinstance(obj, Path):
        yield prefix, obj
    elif isinstance(obj, BaseModel):
        for name in type(obj).model_fields:
            yield from _paths(getattr(obj, name), f"{prefix}.{name}" if prefix else name)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _paths(v, f"{prefix}.{i}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, f"{prefix}.{k}")


def _under(path: Path, folder: Path) -> bool:
    try:
        return path.resolve().is_relative_to(folder.resolve())
    except (OSError, ValueError, RuntimeError):  # a loop of links, a NUL byte
        return False


def check_locked(host: "ControlHost", new: AgentConfig, remote: bool) -> None:
    """Trusted keys never change by reload; a remote config's paths stay where the agent's own data is."""
    old_keys = host.rcfg.updates.trusted_keys if host.rcfg.updates else None
    new_u = resolve_files(new, host.config_path).updates
    if (new_u.trusted_keys if new_u else None) != old_keys:
        raise Refused("updates.trusted_keys cannot change by reload: install the new keys in the local "
                      "config file and restart the agent", "config")
    if not remote:
        return
    base, state = host.config_path.resolve().parent, host.state_dir
    running = dict(_paths(host.cfg))
    new_paths = dict(_paths(new))
    absolute = {k: (p if p.is_absolute() else base / p) for k, p in new_paths.items()}
    problems = [f"{k}: must stay under device.state_dir (or be the running config's {k})"
                for k, p in new_paths.items() if running.get(k) != p and not _under(absolute[k], state)]
    written = {k: absolute[k] for k in WRITTEN if k in absolute}
    written.setdefault("outbox.path", state / "outbox.sqlite")
    written.setdefault("health.file", state / "health.json")
    others = [host.config_path] + [p for k, p in absolute.items() if k not in WRITTEN]
    for k, p in written.items():
        taken = [o for o in others + [w for j, w in written.items() if j != k] if _same(p, o)]
        inside = [d for d in ("models", "engines") if _under(p, state / d)]
        if taken or inside:
            problems.append(f"{k}: names a file the agent reads or writes for something else")
    if problems:
        raise Refused("; ".join(problems), "validate")


def _same(a: Path, b: Path) -> bool:
    try:
        a, b = a.resolve(), b.resolve()
    except (OSError, ValueError, RuntimeError):
        return True  # unresolvable: treat as a clash (refused)
    return a == b or a.name.startswith(b.name + "-") and a.parent == b.parent  # sqlite's -wal and -shm


# --------------------------------------------------------------------------- applying

@register("reload", ReloadCommand)
def on_reload(host: "ControlHost", cmd: ReloadCommand) -> dict:
    """``cmd/reload`` (SIGHUP arrives as one too, without ``config``)."""
    return reload(host, cmd.config, cmd.sig)


def reload(host: "ControlHost", text: str | None, sig: str | None = None) -> dict:
    """Validate, then apply (in place or by restart); the outcome for the ack, or ``Refused``."""
    from .. import taskset

    new = _read(host, text, sig)
    check_locked(host, new, remote=text is not None)
    resolved = resolve_files(new, host.config_path)
    try:
        preflight(resolved, str(host.config_path))
    except ConfigError as e:
        raise Refused("; ".join(e.problems), "validate") from None
    if config_hash(new) == host.config_hash:
        return {"status": "unchanged"}
    store = ModelStore.for_config(resolved, host.state_dir, keys=host.installed.keys)  # keys as loaded at start
    try:  # every task built beside the running ones; unchanged tasks are reused as they are
        tasks = taskset.build(resolved, host.config_path, host.cache_dir, host.health, store.candidates,
                              previous=host.taskset)
    except Exception as e:
        raise Refused(f"tasks: {type(e).__name__}: {e}", "load") from None
    if text is not None:
        _persist(host.config_path, text)
    restart = restart_keys(host.cfg, new)
    if restart:
        host.request_restart(new)
    else:
        host.apply_config(new, resolved, tasks, store)
    return {"status": "applied", "ch": config_hash(new), **({"restart": restart} if restart else {})}


def _persist(path: Path, text: str) -> None:
    """Replace the config file atomically (written beside it, synced, renamed)."""
    incoming = path.with_name(f".{path.name}.incoming")
    try:
        with open(incoming, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(incoming, path)
    except OSError as e:
        incoming.unlink(missing_ok=True)
        raise Refused(f"cannot replace {path} ({e.strerror or e}): the new config could not be kept",
                      "persist") from None
