"""``roadside replay``: publish recordings to a device's broker as its sensors would."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ORDER = 100


def register(sub: argparse._SubParsersAction) -> None:
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
    rp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..sources.replay import replay

    if not (args.audio or args.images or args.detectors):
        raise ValueError("replay needs at least one of --audio, --images, --detectors")
    p = lambda v: Path(v) if v else None  # noqa: E731
    sent = replay(args.broker, args.device, p(args.audio), p(args.images), p(args.detectors), rate=args.rate,
                  prefix=args.prefix, sample_rate=args.sample_rate, chunk_ms=args.chunk_ms, qos=args.qos)
    print(json.dumps({"sent_bytes": sent}))
    return 0
