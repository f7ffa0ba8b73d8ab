"""Live reload (``cmd/reload`` and SIGHUP): a new config is validated whole before anything changes.

Validation is everything a start would check: the schema (``load_config``: every problem
with its line and dotted key), the files it names (certificates, keys, passwords:
``config.preflight``), and every task it configures, built beside the running ones (model
contract, front-end, rule classes, dry run, smoke inference). Any failure: the command is
answered ``refused`` with the reason and the running config stays.

A valid config is applied in place when only ``tasks``, ``level``, ``health``,
``updates``, ``device.timezone``/``time_quality``/``max_sensors`` or ``uplink.heartbeat_s``
changed: unchanged tasks keep their state, changed ones are swapped in one assignment.
Anything else (identity, brokers, sources, outbox) restarts the agent's parts in-process
with the new config (a new boot number; the outbox carries everything over).

``cmd/reload`` with a ``config`` (YAML text) validates that text and, only if it is valid,
atomically replaces the config file with it, so the applied config survives a restart; a
config file that cannot be written refuses the command. Without ``config`` (and on SIGHUP)
the config file is read again. An agent started from a signed bundle (``roadside agent
--bundle``) checks the whole bundle again before it reads the config, and refuses inline text:
its config changes only by a new signed bundle. Who may send commands is the broker's ACL (docs/mqtt.md).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .commands import Refused
from .config import AgentConfig, config_hash, load_config, preflight, resolve_files
from .schema import ConfigError

if TYPE_CHECKING:
    from .runtime import Agent

# Changes that the running parts can take without reconnecting anything.
HOT_SECTIONS = {"tasks", "level", "health", "updates"}
HOT_KEYS = {"device": {"timezone", "time_quality", "max_sensors"}, "uplink": {"heartbeat_s"}}


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


def _read(agent: "Agent", text: str | None) -> tuple[AgentConfig, Path | None]:
    """The new config and, for inline text, the validated file that will replace the config file."""
    path = agent.config_path
    if path is None:
        raise Refused("the agent was not started from a config file", "config")
    if agent.verify_source is not None:  # a signed bundle: its config is read only after its check passes again
        if text is not None:
            raise Refused("this agent runs a signed bundle: its config changes by installing a new bundle "
                          "(roadside flash), not by cmd/reload text", "config")
        try:
            agent.verify_source()
        except ValueError as e:  # BundleError
            raise Refused(f"bundle: {e}", "verify") from None
    if text is None:
        try:
            return load_config(path), None
        except ConfigError as e:
            raise Refused("; ".join(e.problems), "validate") from None
    incoming = path.with_name(f".{path.name}.incoming")
    try:
        incoming.write_text(text)
    except OSError as e:
        raise Refused(f"cannot write beside {path} ({e.strerror or e}): the new config could not be kept",
                      "persist") from None
    try:
        return load_config(incoming), incoming
    except ConfigError as e:
        incoming.unlink(missing_ok=True)
        raise Refused("; ".join(e.problems), "validate") from None


def reload(agent: "Agent", text: str | None) -> dict:
    """Validate, then apply (in place or by restart); the outcome for the ack, or ``Refused``."""
    from . import taskset

    new, incoming = _read(agent, text)
    try:
        resolved = resolve_files(new, agent.config_path)
        try:
            preflight(resolved, str(agent.config_path))
        except ConfigError as e:
            raise Refused("; ".join(e.problems), "validate") from None
        if config_hash(new) == agent.origin.config_hash:
            return {"status": "unchanged"}
        store = agent.make_store(resolved)
        try:  # every task built beside the running ones; unchanged tasks are reused as they are
            tasks = taskset.build(resolved, agent.config_path, agent.cache_dir, agent.health, store.candidates,
                                  previous=agent.taskset)
        except Exception as e:
            raise Refused(f"tasks: {type(e).__name__}: {e}", "load") from None
        if incoming is not None:
            try:
                os.replace(incoming, agent.config_path)
            except OSError as e:
                raise Refused(f"cannot replace {agent.config_path} ({e.strerror or e})", "persist") from None
            incoming = None
        restart = restart_keys(agent.cfg, new)
        if restart:
            agent.request_restart(new)
        else:
            agent.apply_config(new, resolved, tasks, store)
        return {"status": "applied", "ch": config_hash(new), **({"restart": restart} if restart else {})}
    finally:
        if incoming is not None:
            incoming.unlink(missing_ok=True)
