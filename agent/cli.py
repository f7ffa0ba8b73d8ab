"""The ``roadside`` command.

The device has no torch, so everything under ``compression`` is imported inside
the subcommand that needs it, never at the top of this file.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import sys
from pathlib import Path

from . import __version__

log = logging.getLogger("roadside")


def _cmd_teacher_train(args: argparse.Namespace) -> int:
    from compression.teachers import noise

    overrides = {k: v for k, v in {"epochs": args.epochs, "max_clips": args.max_clips}.items() if v is not None}
    report = noise.run(args.data, Path(args.out), Path(args.recipe) if args.recipe else None, **overrides)
    ft, zs = report["fine_tuned"], report["zero_shot"]
    print(f"noise teacher on {report['val_fold']}: accuracy {ft['accuracy']:.4f}, macro-F1 {ft['macro_f1']:.4f} "
          f"(zero-shot {zs['accuracy']:.4f}); fine-tuning {report['seconds']['fine_tune']} s; wrote {args.out}")
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    from compression import gate, pipeline

    overrides = dict(_parse_set(kv) for kv in args.set or [])
    try:
        report = pipeline.run(Path(args.recipe), args.data, Path(args.out) if args.out else None,
                              Path(args.work) if args.work else None, **overrides)
    except gate.GateFailed as e:
        print(f"roadside: {e}", file=sys.stderr)
        return 3
    s = report["stages"]
    for name, st in s.items():
        lat = st.get("latency", {}).get("total_ms")
        per = "crop" if "macs_per_image" in st else "s of audio"  # image tasks count per crop
        per = per if "macs_per_image" in st or "macs_per_second" in st else "window"  # detector tasks: no MACs
        macs = st.get("macs_per_image", st.get("macs_per_second"))
        print(f"{name:14s} accuracy {st['accuracy']:.4f}  macro-F1 {st['macro_f1']:.4f}  params {st['params']:>7d}  "
              + (f"{macs / 1e6:6.2f} M MACs per {per}" if macs is not None else "")
              + (f"  {lat:.3f} ms per {per}" if lat else ""))
    print(f"gate passed; shipped {report['shipped']}")
    return 0


def _parse_set(kv: str) -> tuple[str, object]:
    import yaml

    if "=" not in kv:
        raise ValueError(f"--set takes KEY=VALUE (dotted key), got {kv!r}")
    key, value = kv.split("=", 1)
    return key, yaml.safe_load(value)


def _cmd_eval(args: argparse.Namespace) -> int:
    from compression.evaluate import evaluate

    result = evaluate(args.model, args.data, threads=args.threads, include_training=args.include_training)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"{result['task']}: n={result['n']} accuracy={result['accuracy']:.4f} macro_f1={result['macro_f1']:.4f}")
        for name, pc in result["per_class"].items():
            print(f"  {name:18s} recall {pc['recall']:.3f}  precision {pc['precision']:.3f}  n={pc['support']}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(duration=args.duration, data=args.data, broker=args.broker)


def _cmd_agent(args: argparse.Namespace) -> int:
    from .config import load_config
    from .runtime import serve

    config, verify = args.config, None
    if args.bundle:  # the signed bundle is checked whole before anything is read from it, and again on reload
        from .bundle import BundleError, verify_bundle

        verify = functools.partial(verify_bundle, args.bundle, args.trusted_key or [_default_trusted_key()])
        try:
            config = verify()
        except BundleError as e:
            print(f"roadside: refused bundle: {e}", file=sys.stderr)
            return 3
        print(f"bundle {args.bundle}: verified", file=sys.stderr)
    elif args.verify_only:
        raise ValueError("--verify-only checks a bundle: give --bundle")
    cfg = load_config(config)  # refused whole before anything starts
    if args.verify_only:
        return 0
    return serve(cfg, config, verify)


def _default_trusted_key() -> str:
    import os

    from .bundle import DEFAULT_TRUSTED_KEY

    return os.environ.get("ROADSIDE_TRUSTED_KEY", str(DEFAULT_TRUSTED_KEY))


def _cmd_flash(args: argparse.Namespace) -> int:
    from .bundle import flash

    key = Path(args.key)
    if not key.is_file():
        raise FileNotFoundError(f"--key {key}: no such file (make one with: roadside keygen --out {key})")
    done = flash(args.config, args.device_id, args.out, key)
    out = done["out"]
    print(f"wrote {out}: bundle for device {done['device']} from {args.config}, signed with key {done['key_id']}")
    for task, m in done["models"].items():
        print(f"  models/{task}/{m['file']} (sha256 {m['sha256'][:16]}), its manifest signed")
    for dotted, rel in done["placeholders"].items():
        print(f"  {rel}: placeholder for {dotted}: replace it on the device")
    print(f"  install: {out}/README.md; check: roadside agent --bundle {out} --trusted-key "
          f"{key.with_suffix('.pub')} --verify-only")
    return 0


def _cmd_keygen(args: argparse.Namespace) -> int:
    from .signing import generate_keypair, key_id, load_public_key

    try:
        private, public = generate_keypair(args.out, args.out + ".pub" if not args.out.endswith(".key") else None)
    except FileExistsError as e:
        print(f"roadside: error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {private} (private, keep it off the devices) and {public} (key id {key_id(load_public_key(public))})")
    return 0


def _cmd_sign(args: argparse.Namespace) -> int:
    from .signing import SignatureError, load_public_key, sign_manifest, verify_manifest
    from .updates import make_bundle, model_file

    if args.reload_id:
        return _sign_reload(args)
    try:
        if args.release is not None:  # the order devices apply releases in (no downgrade): part of what is signed
            manifest = json.loads(Path(args.manifest).read_text())
            Path(args.manifest).write_text(json.dumps({**manifest, "release": args.release}, indent=2) + "\n")
        sig = sign_manifest(args.manifest, args.key)
        if args.verify_with:  # the operator's check that the devices' key accepts it
            verify_manifest(args.manifest, [load_public_key(args.verify_with)], exclusive=False)
    except SignatureError as e:
        print(f"roadside: refused: {e}", file=sys.stderr)
        return 3
    print(f"wrote {sig}")
    if args.rollback_from is not None:
        from .signing import rollback_message, sign_bytes

        manifest = json.loads(Path(args.manifest).read_text())
        sha = manifest["files"][model_file(manifest)]["sha256"]
        token = sign_bytes(rollback_message(manifest.get("task", ""), args.rollback_from, sha), args.key)
        print(json.dumps({"rollback": token}))
    if args.bundle:
        data = make_bundle(Path(args.manifest).parent, args.bundle)
        print(f"wrote {args.bundle} ({len(data)} bytes)")
    return 0


def _sign_reload(args: argparse.Namespace) -> int:
    """A config file signed for ``cmd/reload``: the whole command on stdout."""
    from .signing import sign_bytes

    text = Path(args.manifest).read_text(encoding="utf-8")
    print(json.dumps({"id": args.reload_id, "config": text, "sig": sign_bytes(text.encode("utf-8"), args.key)}))
    return 0


def _cmd_health(args: argparse.Namespace) -> int:
    from .health import check_health_file

    ok, why = check_health_file(args.file, args.max_age)
    print(why, file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def _cmd_config_check(args: argparse.Namespace) -> int:
    from .config import config_hash, load_config

    cfg = load_config(args.file)
    print(f"{args.file}: ok (device {cfg.device.id}, config hash {config_hash(cfg)})")
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from .sources.replay import replay

    if not (args.audio or args.images or args.detectors):
        raise ValueError("replay needs at least one of --audio, --images, --detectors")
    p = lambda v: Path(v) if v else None  # noqa: E731
    sent = replay(args.broker, args.device, p(args.audio), p(args.images), p(args.detectors), rate=args.rate,
                  prefix=args.prefix, sample_rate=args.sample_rate, chunk_ms=args.chunk_ms, qos=args.qos)
    print(json.dumps({"sent_bytes": sent}))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="roadside", description="Edge inference for smart-city roadside units.")
    p.add_argument("--version", action="version", version=f"roadside {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="the whole system on this machine: brokers, the agent, a street scene "
                                       "replayed as sensors would send it, alerts as the city receives them")
    demo.add_argument("--duration", type=float, default=45.0, help="seconds of the scene to play (default 45)")
    demo.add_argument("--data", help="data directory (default: $ROADSIDE_DATA or ../shared/data; "
                                     "without one the scene is generated and says so)")
    demo.add_argument("--broker", choices=["auto", "mosquitto", "python"], default="auto",
                      help="MQTT brokers: mosquitto when installed (auto), or the in-process Python one")
    demo.set_defaults(func=_cmd_demo)

    teacher = sub.add_parser("teacher", help="teacher models (needs the train extra: torch)")
    tsub = teacher.add_subparsers(dest="teacher_command", required=True)
    train = tsub.add_parser("train", help="fine-tune a teacher and write checkpoint, manifest, report")
    train.add_argument("--task", choices=["noise"], required=True)
    train.add_argument("--data", help="data directory (default: $ROADSIDE_DATA or ../shared/data)")
    train.add_argument("--out", required=True, help="output folder")
    train.add_argument("--recipe", help="recipe YAML (default compression/recipes/noise_teacher.yaml)")
    train.add_argument("--epochs", type=int, help="override the recipe's epochs")
    train.add_argument("--max-clips", type=int, help="use only N clips per split (smoke runs)")
    train.set_defaults(func=_cmd_teacher_train)

    comp = sub.add_parser("compress", help="distil, prune, quantise and export a student (needs torch)")
    comp.add_argument("--recipe", required=True, help="recipe YAML, e.g. compression/recipes/noise.yaml")
    comp.add_argument("--data", help="data directory (default: $ROADSIDE_DATA or ../shared/data)")
    comp.add_argument("--out", help="shipped folder (default agent/models/<task>)")
    comp.add_argument("--work", help="intermediate checkpoints (default runs/<name>)")
    comp.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="override a recipe key, e.g. --set distil.epochs=1 (validated like the file)")
    comp.set_defaults(func=_cmd_compress)

    agent = sub.add_parser("agent", help="run the edge agent (sensors in over MQTT, alerts out)")
    source = agent.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", help="device config, e.g. firmware_configs/test.yaml")
    source.add_argument("--bundle", help="a device bundle (roadside flash): verified whole before it starts")
    agent.add_argument("--trusted-key", action="append", metavar="PUB",
                       help="operator public key the bundle must be signed with (repeatable; default "
                            "$ROADSIDE_TRUSTED_KEY or /etc/roadside/operator.pub)")
    agent.add_argument("--verify-only", action="store_true", help="check the bundle and its config, start nothing")
    agent.set_defaults(func=_cmd_agent)

    fl = sub.add_parser("flash", help="write a signed device bundle: config, models, certificate placeholders, "
                                      "systemd unit")
    fl.add_argument("--config", required=True, help="firmware config, e.g. firmware_configs/jetson-orin-nano.yaml")
    fl.add_argument("--device-id", required=True, help="this device's id (topic level; [A-Za-z0-9_-], <= 32)")
    fl.add_argument("--out", required=True, help="bundle folder to write (new or empty)")
    fl.add_argument("--key", default="operator.key", help="operator's Ed25519 private key (default operator.key; "
                                                          "roadside keygen makes one)")
    fl.set_defaults(func=_cmd_flash)

    kg = sub.add_parser("keygen", help="new Ed25519 key pair for signing model bundles")
    kg.add_argument("--out", required=True, help="private key file (e.g. ops.key); the public key goes beside it "
                                                 "as .pub (that one goes into the devices' updates.trusted_keys)")
    kg.set_defaults(func=_cmd_keygen)

    sg = sub.add_parser("sign", help="sign an artefact's manifest.json (after checking its files' sha256)")
    sg.add_argument("manifest", help="the artefact's manifest.json; manifest.sig is written beside it")
    sg.add_argument("--key", required=True, help="Ed25519 private key (roadside keygen)")
    sg.add_argument("--verify-with", help="public key to check the signature with afterwards")
    sg.add_argument("--bundle", help="also write the bundle (tar) that cmd/model carries or points to")
    sg.add_argument("--release", type=int, help="set the manifest's release (an integer devices only ever raise) "
                                                "before signing")
    sg.add_argument("--rollback-from", type=int, metavar="HIGHEST",
                    help="also print the signed permission to roll back to this model from release HIGHEST")
    sg.add_argument("--reload-id", metavar="ID", help="sign a config file instead: print the cmd/reload command "
                                                      "carrying it (id ID)")
    sg.set_defaults(func=_cmd_sign)

    hc = sub.add_parser("health", help="exit 0 if the agent's health file is fresh and healthy, else 1 "
                                       "(a container HEALTHCHECK)")
    hc.add_argument("--file", required=True, help="the agent's health file (default {state_dir}/health.json)")
    hc.add_argument("--max-age", type=float, help="seconds (default: 3 heartbeat periods + 5 s)")
    hc.set_defaults(func=_cmd_health)

    config = sub.add_parser("config", help="device configs")
    csub = config.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate a device config and exit (nothing is started)")
    check.add_argument("file")
    check.set_defaults(func=_cmd_config_check)

    rp = sub.add_parser("replay", help="publish recordings to a device's broker as its sensors would")
    rp.add_argument("--broker", required=True, help="HOST:PORT of the device's local broker")
    rp.add_argument("--device", required=True, help="device id (topic level)")
    rp.add_argument("--audio", help="WAV/FLAC file or folder (played as microphone mic0)")
    rp.add_argument("--images", help="folder of JPEG/PNG crops (played as camera cam0)")
    rp.add_argument("--detectors", help="detector CSV (long ts,sensor,speed_mph or wide like los_speed.csv)")
    rp.add_argument("--rate", type=float, default=1.0, help="1 = real time (default), 4 = 4x faster, 0 = flat out")
    rp.add_argument("--prefix", default="sensors", help="topic prefix (default sensors)")
    rp.add_argument("--sample-rate", type=int, default=16000, help="microphone rate to send (default 16000)")
    rp.add_argument("--chunk-ms", type=int, default=100, help="audio chunk length (default 100)")
    rp.add_argument("--qos", type=int, choices=[0, 1], default=1)
    rp.set_defaults(func=_cmd_replay)

    ev = sub.add_parser("eval", help="score a model (.pt checkpoint or .onnx + manifest) on a data folder")
    ev.add_argument("--model", required=True)
    ev.add_argument("--data", help="data folder laid out like the shared ones")
    ev.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    ev.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    ev.add_argument("--include-training", action="store_true",
                    help="also score the folds the model or its teacher trained on (left out by default; the "
                         "JSON names them under excluded, or under training_folds_scored when included)")
    ev.set_defaults(func=_cmd_eval)
    _add_fleet(sub)
    return p


def _add_fleet(sub: argparse._SubParsersAction) -> None:
    """``roadside fleet ...`` where the city side is installed; a pole's install has no ``fleet`` package."""
    try:
        from fleet.cli import add_parser
    except ImportError:
        return
    add_parser(sub)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Logs and progress bars go to stderr: stdout is for results (``eval --json``).
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError) as e:
        # Bad input is the user's to fix: say what was wrong, without a traceback.
        print(f"roadside: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
