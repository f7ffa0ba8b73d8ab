"""Commands from the city: ``{prefix}/{site}/{device}/cmd/{name}`` in, ``.../cmd/{name}/ack`` out.

Every command is a JSON object with an ``id`` and is answered once on its ack topic with the
outcome (a duplicate delivery, same id and same bytes, gets the same answer again and is not
run twice; the same id with other bytes is another command)::

    {"v":1,"id":"upd-42","cmd":"model","ok":true,"status":"applied","ts":...,"ch":"<config hash>",
     "model":{"task":"noise","sha256":"<64 hex>","version":"0.9.1"}}
    {"v":1,"id":"upd-43","cmd":"model","ok":false,"status":"refused","stage":"verify",
     "reason":"verify: .../manifest.sig: signature does not verify against any trusted key ...",...}

status: ``applied``, ``unchanged`` (already running that), ``refused`` (nothing was loaded),
``rolled_back`` (the new model failed to load or its smoke inference; the old one never
stopped); for ``shadow``/``promote``/``abort`` also ``shadowing`` and ``aborted``
(docs/rollouts.md). Commands run one at a time on their own thread, never on the MQTT thread.
Who may send them is the broker's ACL (docs/mqtt.md); model bundles and reload texts are
also signed (agent.control.signing), so a compromised broker cannot change what runs. Reasons name
files in the state folder as ``{state_dir}/...``, never by their absolute path.

Each command module registers its own schema and handler (``register``); the handlers see the
agent only as a ``ControlHost`` (agent.control.host). ``COMMAND_MODULES`` lists the modules
that register, imported on first use so that importing this module stays cheap.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import queue
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Callable, NamedTuple

from pydantic import Field, ValidationError, field_validator, model_validator

from ..schema import StrictModel, format_errors

if TYPE_CHECKING:
    from .host import ControlHost

log = logging.getLogger("roadside.commands")
MAX_REASON = 400
MAX_PAYLOAD = 128 << 20  # an inline bundle at the default updates.max_bundle_bytes is ~67 MB of base64
ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,64}$"
COMMAND_MODULES = ("model", "reload", "shadow")  # under agent.control; each registers its commands on import


class Command(NamedTuple):
    schema: type[StrictModel]  # the payload, validated whole before the handler runs
    handler: Callable[["ControlHost", StrictModel], dict]  # the ack's fields, or raises Refused


_REGISTRY: dict[str, Command] = {}


def register(name: str, schema: type[StrictModel]) -> Callable:
    """Decorator: ``handler(host, cmd) -> dict`` answers ``cmd/{name}`` whose payload is ``schema``."""
    def add(handler: Callable) -> Callable:
        if name in _REGISTRY and _REGISTRY[name].handler is not handler:
            raise ValueError(f"command {name!r} registered twice")
        _REGISTRY[name] = Command(schema, handler)
        return handler
    return add


def registry() -> dict[str, Command]:
    """Every known command; the command modules are imported (and so register) on the first call."""
    for module in COMMAND_MODULES:
        importlib.import_module(f"{__package__}.{module}")  # cached after the first time
    return _REGISTRY


def model_task(name: str) -> str:
    """Validator for ``task`` fields: a task that runs a model (others have nothing to update or shadow)."""
    from ..tasks.registry import model_tasks

    if name not in model_tasks():
        raise ValueError(f"unknown task {name!r} (tasks with a model: {model_tasks()})")
    return name


class BundleCommand(StrictModel):
    """A signed bundle, inline or by url: what ``cmd/model`` and ``cmd/shadow`` carry."""

    id: str = Field(pattern=ID_PATTERN, description="echoed in the ack; a repeated id is answered, not re-run")
    task: str = Field(description="a task that runs a model (agent.tasks.registry)")
    bundle: str | None = Field(None, description="the bundle (tar), base64")
    url: str | None = Field(None, description="http(s) address of the bundle")
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$", description="the bundle's sha256 (with url)")

    _task = field_validator("task")(classmethod(lambda cls, v: model_task(v)))

    @model_validator(mode="after")
    def _one_source(self):
        if (self.bundle is None) == (self.url is None):
            raise ValueError("exactly one of bundle (inline, base64) or url")
        return self


class Refused(Exception):
    """A command answered ``refused`` (or ``rolled_back``), with the stage that said no."""

    def __init__(self, reason: str, stage: str | None = None, status: str = "refused"):
        self.reason, self.stage, self.status = reason, stage, status
        super().__init__(reason)


def parse(name: str, payload: bytes) -> StrictModel:
    commands = registry()
    if name not in commands:
        raise Refused(f"unknown command {name!r} (known: {sorted(commands)})", "parse")
    if len(payload) > MAX_PAYLOAD:
        raise Refused(f"{len(payload)} bytes (at most {MAX_PAYLOAD})", "parse")
    try:
        data = json.loads(payload)
    except (ValueError, RecursionError) as e:  # ValueError: bad JSON, bad UTF-8, a 5000-digit number
        raise Refused(f"not a JSON object ({type(e).__name__}: {str(e)[:100]})", "parse") from None
    try:
        return commands[name].schema.model_validate(data)
    except ValidationError as e:
        raise Refused("; ".join(format_errors(e, name)), "parse") from None


class Commands:
    """A queue and a thread: ``submit`` from the MQTT thread, run in order, answer each."""

    def __init__(self, host: "ControlHost", publish: Callable[[str, bytes], None] | None = None,
                 max_queued: int = 8):
        self.host, self.publish = host, publish
        self._queue: queue.Queue[tuple[str, bytes]] = queue.Queue(maxsize=max_queued)
        # recent (command, id, sha256 of the payload) -> its answer: a bogus command cannot pin a later real one's id
        self._answers: OrderedDict[tuple, dict] = OrderedDict()
        self._thread = threading.Thread(target=self._run, name="commands", daemon=True)
        self._stop = threading.Event()

    def submit(self, name: str, payload: bytes) -> None:
        try:
            self._queue.put_nowait((name, payload))
        except queue.Full:
            self._answer((name, _peek_id(payload), ""), {"ok": False, "status": "refused", "stage": "queue",
                                                         "reason": "busy: too many commands waiting"}, remember=False)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        try:
            self._queue.put_nowait(("", b""))  # wake the thread (an empty name is the stop marker)
        except queue.Full:
            pass  # it is busy and will see the stop flag after the current command
        self._thread.join(5.0)

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        while not self._stop.is_set():
            name, payload = self._queue.get()
            if not name:
                continue
            try:
                self.handle(name, payload)
            except Exception:  # a command bug must not take the command thread down
                log.exception("command %s failed", name)

    def handle(self, name: str, payload: bytes) -> dict:
        cmd_id = _peek_id(payload)
        key = (name, cmd_id, hashlib.sha256(payload).hexdigest())
        if cmd_id is not None and key in self._answers:
            log.info("command %s %s: repeated delivery, answered again", name, cmd_id)
            return self._answer(key, self._answers[key], remember=False)
        t0 = time.monotonic()
        try:
            cmd = parse(name, payload)
            outcome = {"ok": True, **registry()[name].handler(self.host, cmd)}
        except Refused as e:
            outcome = {"ok": False, "status": e.status, "stage": e.stage,
                       "reason": self._scrub(e.reason)[:MAX_REASON]}
        outcome["s"] = round(time.monotonic() - t0, 2)
        level = logging.INFO if outcome["ok"] else logging.WARNING
        log.log(level, "command %s %s: %s%s", name, cmd_id, outcome["status"],
                f" ({outcome['reason']})" if "reason" in outcome else "")
        ack = self._answer(key, outcome)
        if outcome.get("restart"):
            self.host.stop()  # after the answer is queued: it goes out before the clean disconnect
        return ack

    def _scrub(self, reason: str) -> str:
        """The absolute state folder replaced by ``{state_dir}``: the city needs no map of the pole's disk."""
        folder = getattr(self.host, "state_dir", None)
        if folder is not None:
            for form in sorted({str(folder), str(folder.resolve())}, key=len, reverse=True):
                reason = reason.replace(form, "{state_dir}")
        return reason

    def _answer(self, key: tuple, outcome: dict, remember: bool = True) -> dict:
        name, cmd_id, _ = key
        if remember and cmd_id is not None:
            self._answers[key] = outcome
            while len(self._answers) > 64:
                self._answers.popitem(last=False)
        ack = {"v": 1, "id": cmd_id, "cmd": name, "ts": int(time.time() * 1000),
               "ch": self.host.config_hash, **outcome}
        if self.publish is not None:
            self.publish(name, json.dumps(ack, separators=(",", ":")).encode())
        return ack


def _peek_id(payload: bytes) -> str | None:
    """The command's id if it has a usable one (so that even a refused command is answered by id)."""
    if len(payload) > MAX_PAYLOAD:
        return None
    try:
        cid = json.loads(payload).get("id")
    except (ValueError, RecursionError, AttributeError):
        return None
    return cid if isinstance(cid, str) and 0 < len(cid) <= 64 else None
