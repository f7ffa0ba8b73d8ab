"""The noise chain's GPU wall-time check, prepared here and run in one call on a lent GPU machine.

The lent machine (`/work/.library/device`) has its own Python with a CUDA torch, reaches no package
registry and gets only this repository's working tree (64 MiB), not ``../shared``. So:

    # here: a seeded, class-balanced subset of UrbanSound8K and the wheels its image lacks, into .device/
    .venv/bin/python scripts/gpu_wall_time.py prepare --data ../shared/data
    # there, one call with carry [".device"]: the same short chain with --device cuda, then --device cpu
    python3 scripts/gpu_wall_time.py run --wheels .device/wheels --data .device/data --out $OUT

``run`` writes ``gpu_wall_time.json`` (each run's wall time, its training epochs' seconds, its stages'
accuracies, the torch and GPU it saw) and each run's log under ``--out``. Both runs use the same recipe,
seed and CPU threads, so only where training runs differs. The chain is the depth plan's noise recipe
(docs/noise.md: its 6 distillation and 40 post-cut KD epochs) without the INT8 and engine stages, on the
subset (350 training clips, 60 of fold 2: what fits in one call beside the tree). On so few clips the gate
refuses the model (exit 3), which this check expects: it measures time, not accuracy. ``run`` needs
only the standard library: it runs before the wheels are installed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# What the chain imports that the lent machines' image lacks (KINDS.md's package list, 2026-11-17); the
# image has torch, numpy, scipy, onnx, onnxruntime, PyYAML, tqdm, matplotlib and typing-extensions.
WHEELS = ["pydantic==2.14.3", "pydantic-core==2.50.4", "annotated-types==0.8.0", "typing-inspection==0.4.5",
          "torch-pruning==1.6.1", "soundfile==0.14.0", "cffi==2.1.1", "pycparser==3.12"]
DEVICE_PYTHON = "3.12"  # the image's python3
TREE_LIMIT = 64 * 2**20  # what one call may carry, the working tree included
DEPTH_PLAN = "{11: {se_keep: 0.25}, 12: {se_keep: 0.25}, 13: {se_keep: 0.25}, 14: {drop: true}, 15: {drop: true}}"
CHAIN = ["--recipe", "compression/recipes/noise_170k.yaml",
         "--set", "teacher.checkpoint=compression/teachers/weights/noise-mn04/teacher.pt",
         "--set", "student.frontend.hop_length=240", "--set", f"prune.plan.blocks={DEPTH_PLAN}",
         "--set", "quantise.enabled=false", "--set", "engine.enabled=false"]
GATE_REFUSED = 3  # roadside compress's exit status when the gate refuses the model: expected here


def pick(clips: list, per_class: int, seed: int) -> list[Path]:
    """``per_class`` clips (``urbansound.Clip``) of every class (all of a class that has fewer), drawn with
    ``seed`` from the sorted list, so the same data folder always gives the same subset; their paths."""
    by_class: dict[int, list[Path]] = {}
    for c in sorted(clips, key=lambda c: c.path):
        by_class.setdefault(c.label, []).append(c.path)
    rng = random.Random(seed)
    return sorted(p for label in sorted(by_class)
                  for p in rng.sample(by_class[label], min(per_class, len(by_class[label]))))


def prepare(data: Path, dest: Path, val_fold: str, train_per_class: int, val_per_class: int, seed: int,
            wheels: bool) -> dict:
    """Copy the subset into ``dest/data/urbansound8k/<fold>/`` and download the wheels into ``dest/wheels``;
    refuses a result that would not travel (working tree + ``dest`` over 64 MiB)."""
    from compression.tasks.noise import urbansound  # here, with the project installed (run needs none of it)

    clips = urbansound.list_clips(urbansound.find_root(data))
    folds = sorted({c.fold for c in clips})
    if val_fold not in folds or len(folds) < 2:
        raise SystemExit(f"prepare: {data} needs {val_fold} and at least one training fold (has {folds})")
    train = pick([c for c in clips if c.fold != val_fold], train_per_class, seed)
    val = pick([c for c in clips if c.fold == val_fold], val_per_class, seed)
    if dest.exists():
        foreign = sorted(p.name for p in dest.iterdir() if p.name not in ("data", "wheels"))
        if foreign:  # never delete a folder this script did not make
            raise SystemExit(f"prepare: {dest} holds {foreign[:3]}, not an earlier prepare's data/ and wheels/: "
                             f"choose another --dest")
        shutil.rmtree(dest)
    for clip in train + val:
        target = dest / "data" / "urbansound8k" / clip.parent.name / clip.name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(clip, target)
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "--python-version", DEVICE_PYTHON, "--implementation", "cp",
                        *[a for p in ("manylinux_2_28_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64")
                          for a in ("--platform", p)], "-d", str(dest / "wheels"), *WHEELS], check=True)
    carried = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    tree = sum((REPO / n).stat().st_size for n in tracked.decode().split("\0") if n and (REPO / n).is_file())
    summary = {"train_clips": len(train), "val_clips": len(val), "folds": sorted({c.parent.name for c in train + val}),
               "carried_bytes": carried, "tree_bytes": tree}
    if carried + tree > TREE_LIMIT:
        raise SystemExit(f"prepare: {dest} ({carried / 2**20:.1f} MiB) and the working tree ({tree / 2**20:.1f} MiB) "
                         f"exceed the {TREE_LIMIT / 2**20:.0f} MiB one call carries: ask for fewer clips per class")
    return summary


def _install(wheels: Path, site: Path) -> None:
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
                    "--upgrade", "--target", str(site), *map(str, sorted(wheels.glob("*.whl")))], check=True)


def _environment(site: Path | None) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    paths = [str(REPO)] + ([str(site)] if site else []) + [env.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
    return env


def _probe(env: dict) -> dict:
    """What the chain's Python sees: it fails here, in seconds, when an import is missing."""
    code = ("import json, os, torch, compression.tasks.noise.chain, agent.cli; "
            "gpu = torch.cuda.is_available(); "
            "print(json.dumps({'torch': torch.__version__, 'cuda': gpu, "
            "'gpu': torch.cuda.get_device_name(0) if gpu else None, 'cpus': os.cpu_count()}))")
    done = subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"run: the chain does not import here:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def chain_once(device: str, data: Path, out: Path, threads: int, env: dict, extra: list[str]) -> dict:
    """One ``roadside compress`` of the short chain on ``device``: its wall time, exit status and report."""
    folder = out / device
    cmd = [sys.executable, "-c", "import sys; from agent.cli import main; sys.exit(main())", "compress", *CHAIN,
           "--set", f"threads={threads}", *extra, "--data", str(data), "--device", device,
           "--out", str(folder / "out"), "--work", str(folder / "work")]
    t0 = time.perf_counter()
    with open(out / f"{device}.log", "w") as log:
        rc = subprocess.run(cmd, env=env, cwd=REPO, stdout=log, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    result = {"device": device, "exit": rc, "wall_seconds": round(seconds, 1)}
    report = folder / "out" / "report.json"
    if rc not in (0, GATE_REFUSED) or not report.is_file():
        return {**result, "error": f"the chain failed (exit {rc}); see {device}.log"}
    r = json.loads(report.read_text())
    epochs = [h for h in r["history"] if "seconds" in h]
    return {**result, "chain_seconds": r["seconds"], "report_device": r.get("device"),
            "training_seconds": round(sum(h["seconds"] for h in epochs), 1),
            "epochs": [{k: h[k] for k in ("run", "epoch", "seconds", "train_loss")} for h in epochs],
            "accuracy": {name: st["accuracy"] for name, st in r["stages"].items()}}


def run(devices: list[str], data: Path, out: Path, wheels: Path | None, threads: int | None, extra: list[str]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    site = None
    if wheels is not None and any(wheels.glob("*.whl")):
        site = Path("/tmp/gpu_wall_time_site")
        _install(wheels, site)
    env = _environment(site)
    seen = _probe(env)
    threads = threads or seen["cpus"]
    result = {"python": sys.version.split()[0], **seen, "threads": threads, "chain": CHAIN + list(extra),
              "runs": [chain_once(d, data, out, threads, env, extra) for d in devices]}
    times = {r["device"]: r.get("training_seconds") for r in result["runs"]}
    if times.get("cuda") and times.get("cpu"):
        result["training_speedup_cuda_vs_cpu"] = round(times["cpu"] / times["cuda"], 2)
    (out / "gpu_wall_time.json").write_text(json.dumps(result, indent=2) + "\n")
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    pr = sub.add_parser("prepare", help="here: the data subset and wheels, into --dest")
    pr.add_argument("--data", type=Path, required=True, help="data root holding urbansound8k/ (or that folder)")
    pr.add_argument("--dest", type=Path, default=REPO / ".device")
    pr.add_argument("--val-fold", default="fold2")
    pr.add_argument("--train-per-class", type=int, default=35)
    pr.add_argument("--val-per-class", type=int, default=6)
    pr.add_argument("--seed", type=int, default=0)
    pr.add_argument("--no-wheels", action="store_true", help="the data only (for a run with this venv's Python)")
    rn = sub.add_parser("run", help="there: the short chain on each --devices, timed, into --out")
    rn.add_argument("--data", type=Path, default=REPO / ".device" / "data")
    rn.add_argument("--out", type=Path, required=True)
    rn.add_argument("--wheels", type=Path, help="install these wheels first (the lent machine's image lacks them)")
    rn.add_argument("--devices", default="cuda,cpu", help="comma-separated, run in this order")
    rn.add_argument("--threads", type=int, help="CPU threads for both runs (default: every CPU)")
    rn.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="one more recipe override")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        summary = prepare(args.data, args.dest, args.val_fold, args.train_per_class, args.val_per_class, args.seed,
                          not args.no_wheels)
    else:
        summary = run(args.devices.split(","), args.data, args.out, args.wheels, args.threads,
                      [a for kv in args.set for a in ("--set", kv)])
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
