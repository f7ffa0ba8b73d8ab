"""Los-loop freeway speeds: the speed table, the detector graph, and a held-out-detector split.

``los_speed.csv`` has a header of detector ids and one row per 5-minute step, with no
timestamps: row 0 is midnight of Thursday 2012-03-01. So time of day = row mod 288 and
weekday = (row // 288 + 3) % 7 with Monday = 0.

Missing values: an empty or NaN cell, or a speed of 0, becomes NaN and is counted. Loop
detectors report 0 when they fail (METR-LA's convention), and a freeway average of
exactly 0 mph over 5 minutes is not a real reading; keeping zeros would teach the model
fake jams. The shared file has none today; the count is kept for manifests.
A negative or infinite speed is an error, not a missing value: it means a wrong file.

Validation holds out whole detectors, never random windows: windows of one detector
overlap and its neighbours in time are near copies, so a random split would leak; and
the independent evaluation uses detectors the model has never seen.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from agent.features.detector import WEEKEND, DetectorParams, make_windows, usual_speeds
from compression.datasets.datadir import resolve_data_dir

SUBDIR = "traffic"
SPEED_FILE, ADJ_FILE = "los_speed.csv", "los_adj.csv"
STEP_S = 300
STEPS_PER_DAY = 86400 // STEP_S
FIRST_WEEKDAY = 3  # 2012-03-01 was a Thursday; Monday = 0
_MISSING = {"", "nan", "na", "null"}


class TrafficDataError(ValueError):
    """A speed or adjacency file with a bad cell or shape; names the file, line and column."""


def find_root(arg: str | Path | None = None) -> Path:
    """The traffic folder: ``arg`` may be the data root or the folder itself."""
    return resolve_data_dir(arg, SUBDIR, is_subdir=lambda p: (p / SPEED_FILE).is_file())


@dataclass(frozen=True)
class SpeedTable:
    path: Path
    ids: tuple[str, ...]  # detector ids, column order
    speeds: np.ndarray  # (T, D) float32 mph, NaN where missing
    time_of_day: np.ndarray  # (T,) int64 step of the day, 0..287
    weekday: np.ndarray  # (T,) int64, Monday = 0
    n_missing: int  # cells that were empty, NaN or 0

    def column(self, detector_id: str) -> np.ndarray:
        try:
            return self.speeds[:, self.ids.index(detector_id)]
        except ValueError:
            raise KeyError(f"detector {detector_id!r} not in {self.path}") from None


def load_speeds(path: str | Path) -> SpeedTable:
    """Read the speed CSV, reporting the line and column of any bad cell."""
    path = Path(path)
    try:
        with open(path, newline="") as f:
            rows = list(csv.reader(f))
    except OSError as e:
        raise TrafficDataError(f"cannot read speed file {path}: {e.strerror or e}") from e
    if not rows:
        raise TrafficDataError(f"speed file {path} is empty")
    ids = tuple(c.strip() for c in rows[0])
    if any(i == "" for i in ids):
        raise TrafficDataError(f"{path}, line 1: empty detector id in column {ids.index('') + 1}")
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    if dupes:
        raise TrafficDataError(f"{path}, line 1: duplicate detector id(s) {dupes}")

    data, n_missing = [], 0
    for lineno, row in enumerate(rows[1:], start=2):
        if not row or all(c.strip() == "" for c in row):
            continue  # blank line, e.g. at the end of the file
        if len(row) != len(ids):
            raise TrafficDataError(f"{path}, line {lineno}: {len(row)} columns, the header has {len(ids)}")
        values = []
        for col, cell in enumerate(row):
            v = _cell(cell, path, lineno, col, ids[col])
            if math.isnan(v) or v == 0.0:
                n_missing += 1
                v = math.nan
            values.append(v)
        data.append(values)
    if not data:
        raise TrafficDataError(f"speed file {path} has a header but no data rows")

    speeds = np.asarray(data, dtype=np.float32)
    row = np.arange(speeds.shape[0], dtype=np.int64)
    return SpeedTable(path=path, ids=ids, speeds=speeds, time_of_day=row % STEPS_PER_DAY,
                      weekday=(row // STEPS_PER_DAY + FIRST_WEEKDAY) % 7, n_missing=n_missing)


def _cell(cell: str, path: Path, lineno: int, col: int, detector: str) -> float:
    text = cell.strip()
    if text.lower() in _MISSING:
        return math.nan
    where = f"{path}, line {lineno} (data row {lineno - 2}), column {col + 1} (detector {detector})"
    try:
        v = float(text)
    except ValueError:
        raise TrafficDataError(f"{where}: {cell!r} is not a number") from None
    if math.isinf(v) or v < 0:
        raise TrafficDataError(f"{where}: {cell!r} is not a valid speed")
    return v


def load_adjacency(path: str | Path, ids: Sequence[str]) -> np.ndarray:
    """The (D, D) float32 weighted adjacency, in the order of ``ids`` (the file has no header)."""
    path = Path(path)
    d = len(ids)
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.reader(f) if r and any(c.strip() for c in r)]
    except OSError as e:
        raise TrafficDataError(f"cannot read adjacency file {path}: {e.strerror or e}") from e
    widths = {len(r) for r in rows}
    if len(rows) != d or widths != {d}:
        raise TrafficDataError(f"adjacency {path} is {len(rows)} rows x {sorted(widths)} columns, "
                               f"expected {d} x {d} for the {d} detectors")
    out = np.empty((d, d), dtype=np.float32)
    for r, row in enumerate(rows):
        for c, cell in enumerate(row):
            where = f"{path}, line {r + 1}, column {c + 1}"
            try:
                v = float(cell)
            except ValueError:
                raise TrafficDataError(f"{where}: {cell!r} is not a number") from None
            if not math.isfinite(v) or v < 0:
                raise TrafficDataError(f"{where}: {cell!r} is not a valid weight (finite, >= 0)")
            out[r, c] = v
    return out


@dataclass(frozen=True)
class DetectorSplit:
    train: tuple[str, ...]
    val: tuple[str, ...]
    seed: int
    val_fraction: float

    def to_dict(self) -> dict:
        """What a manifest records, with a sha256 of the lists."""
        lists = {"train": list(self.train), "val": list(self.val)}
        digest = hashlib.sha256(json.dumps(lists, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
        return {"seed": self.seed, "val_fraction": self.val_fraction, **lists, "sha256": digest}


def split_detectors(ids: Sequence[str], val_fraction: float = 0.2, seed: int = 0) -> DetectorSplit:
    """Hold out ``round(D * val_fraction)`` whole detectors (seeded); both lists keep file order."""
    ids = tuple(ids)
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    if len(set(ids)) != len(ids):
        raise ValueError("detector ids must be unique")
    n_val = int(round(len(ids) * val_fraction))
    if n_val == 0 or n_val == len(ids):
        raise ValueError(f"cannot hold out {val_fraction:.0%} of {len(ids)} detector(s): "
                         f"one side would be empty")
    held = set(np.random.default_rng(seed).permutation(len(ids))[:n_val].tolist())
    return DetectorSplit(train=tuple(i for k, i in enumerate(ids) if k not in held),
                         val=tuple(i for k, i in enumerate(ids) if k in held),
                         seed=int(seed), val_fraction=float(val_fraction))


def detector_windows(table: SpeedTable, detector_ids: Sequence[str],
                     params: DetectorParams = DetectorParams(), usual: np.ndarray | None = None):
    """make_windows over several detectors, stacked: (X, y_state, y_speed, detector index, t_index).

    ``usual``: (days, 2, steps per day, D) usual speeds known on each day (``usual_speed_tables``),
    for parameters with a profile; None leaves the profile unknown.
    """
    if params.step_s != STEP_S:
        raise ValueError(f"the speed table has {STEP_S} s steps, params say step_s={params.step_s}")
    day = np.arange(table.speeds.shape[0]) // STEPS_PER_DAY
    parts = []
    for det in detector_ids:
        col = table.ids.index(det)
        X, ys, yv, t = make_windows(table.column(det), table.time_of_day, table.weekday, params,
                                    None if usual is None else usual[..., col], None if usual is None else day)
        parts.append((X, ys, yv, np.full(len(t), col, np.int64), t))
    if not parts:
        return make_windows(np.zeros(0), np.zeros(0), np.zeros(0), params)[:3] + (np.zeros(0, np.int64),) * 2
    return tuple(np.concatenate(a) for a in zip(*parts))


# --- evaluation time and the historical-average baseline ------------------------------

def find_speed_file(arg: str | Path | None = None) -> Path:
    """A speed CSV given directly, or ``los_speed.csv`` in the traffic folder of a data root."""
    if arg is not None and Path(arg).is_file():
        return Path(arg).resolve()
    return find_root(arg) / SPEED_FILE


def eval_start_row(n_rows: int, eval_days: int) -> int:
    """First row of the evaluation time: the last ``eval_days`` whole days of the table.

    Everything before it is training time: windows whose target falls there train the
    models, and the historical average is computed from it only.
    """
    start = n_rows - eval_days * STEPS_PER_DAY
    if eval_days < 1 or start < STEPS_PER_DAY:
        raise TrafficDataError(f"{n_rows} rows ({n_rows / STEPS_PER_DAY:.1f} days): the last {eval_days} day(s) are "
                               f"evaluated and at least one whole day before them is needed for the historical "
                               f"average; give a longer table")
    return start


def historical_average(table: SpeedTable, before_row: int) -> np.ndarray:
    """Per detector and time of day, the mean speed over rows before ``before_row``,
    separately for weekdays and weekends: (2, steps per day, D), index 0 weekday, 1 weekend.

    Where a day type has no reading at a time of day, the mean over all days at that time
    is used, then the detector's overall mean (NaN only for a detector with no reading).
    """
    speeds = table.speeds[:before_row].astype(np.float64)
    tod, weekend = table.time_of_day[:before_row], is_weekend(table.weekday[:before_row])
    d = speeds.shape[1]
    sums, counts = np.zeros((3, STEPS_PER_DAY, d)), np.zeros((3, STEPS_PER_DAY, d))
    ok = np.isfinite(speeds)
    for kind, rows in enumerate((~weekend, weekend, np.ones_like(weekend))):
        np.add.at(sums[kind], tod[rows], np.where(ok[rows], speeds[rows], 0.0))
        np.add.at(counts[kind], tod[rows], ok[rows])
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts
        overall = np.where(ok, speeds, 0.0).sum(0) / ok.sum(0)
    all_days = np.where(np.isnan(mean[2]), overall[None, :], mean[2])
    return np.stack([np.where(np.isnan(mean[k]), all_days, mean[k]) for k in (0, 1)]).astype(np.float32)


def usual_speed_tables(table: SpeedTable, params: DetectorParams, training_days: int | None = None) -> np.ndarray:
    """The detectors' usual speeds known on each day: (days, 2, steps per day, D).

    ``training_days`` None: what a device that has run since row 0 knows, the days before
    each day (``DetectorProfile``'s rule, for evaluation). A number N: for training, every
    other day among the first N (training time), so every training window has a profile
    drawn from days other than its own, and nothing from evaluation time enters.
    """
    speeds = table.speeds.astype(np.float64)
    n_days = -(-speeds.shape[0] // STEPS_PER_DAY)
    blocks = np.full((n_days * STEPS_PER_DAY, speeds.shape[1]), np.nan)
    blocks[:speeds.shape[0]] = speeds
    blocks[~(blocks > 0)] = np.nan
    blocks = blocks.reshape(n_days, STEPS_PER_DAY, -1)
    weekend = is_weekend((np.arange(n_days) + FIRST_WEEKDAY) % 7)
    out = np.full((n_days, 2, STEPS_PER_DAY, speeds.shape[1]), np.nan)
    for d in range(n_days):
        if training_days is None:
            use = np.arange(d)
        else:
            use = np.array([e for e in range(min(training_days, n_days)) if e != d], np.int64)
        if use.size:
            out[d] = usual_speeds(blocks[use], weekend[use], params.profile_max_days)
    return out


def is_weekend(weekday) -> np.ndarray:
    """The front-end's day types (agent.features.detector.WEEKEND), for whole arrays."""
    return np.isin(np.asarray(weekday), WEEKEND)
