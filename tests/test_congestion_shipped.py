"""The shipped congestion model (agent/models/congestion/, committed): its contract, and the agent running it.

The agent's congestion task receives a held-out detector's real 5-minute readings one at a
time, as a device would, and must raise exactly the alerts that the training side's
windows (make_windows) and the same rule give offline: one front-end, one model, one answer.
What every shipped model must be (intact, its contract, lineage, gate, targets, plots, the agent's
smoke inference) is tested once for all of them in test_shipped_artefacts.py.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import numpy as np
import pytest

from agent.backends.contract import load_contract
from agent.config import ClassRule, OnnxBackendConfig, RuleConfig
from agent.features.detector import CONGESTED, DetectorParams, make_windows
from agent.features.warning import WarningPoint, warning_score
from agent.payloads import DetectorReading
from agent.rules import Rule, softmax
from agent.tasks import load_model
from agent.tasks.congestion import CongestionTask, CongestionTaskConfig
from compression.tasks.congestion.traffic import load_speeds, usual_speed_tables

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "agent" / "models" / "congestion" / "model.onnx"
T0 = int(dt.datetime(2012, 3, 1, tzinfo=dt.timezone.utc).timestamp() * 1000)  # row 0: Thursday midnight
STEP_MS = 300_000
# the shipped model's warning operating point (its manifest's `warning`), as the firmware configs use it
POINT = WarningPoint.from_dict(json.loads((SHIPPED.parent / "manifest.json").read_text())["warning"])
RULE = RuleConfig(cooldown_s=0, classes={"congested": ClassRule(threshold=POINT.threshold)})


@pytest.fixture(scope="module")
def shipped() -> tuple[dict, dict]:
    if not SHIPPED.is_file():
        pytest.fail(f"{SHIPPED} is missing: it is committed; rebuild it with "
                    f"roadside compress --recipe compression/recipes/congestion.yaml")
    manifest = json.loads((SHIPPED.parent / "manifest.json").read_text())
    report = json.loads((SHIPPED.parent / "report.json").read_text())
    return manifest, report


def test_shipped_artefact_states_its_classes_outputs_split_and_baselines(shipped):
    manifest, report = shipped
    contract = load_contract(SHIPPED)
    assert contract.labels == ("free", "slowed", "congested")
    assert DetectorParams.from_dict(contract.frontend).uses_profile
    assert manifest["outputs"] == ["logits", "speed"]
    ev = manifest["evaluation"]
    assert (len(ev["train_detectors"]), len(ev["val_detectors"])) == (128, 32)
    assert not set(ev["train_detectors"]) & set(ev["val_detectors"])
    shipped_stage = report["stages"][report["shipped"]["cpu"]]
    for name in ("persistence", "historical_average"):  # the baselines, on the same windows
        assert report["baselines"][name]["n"] == shipped_stage["n"] == ev["windows"]


def _busiest_held_out_detector(table, val: list[str], start: int) -> str:
    congested = [(np.nan_to_num(table.column(d)[start:], nan=99) < 35).sum() for d in val]
    return val[int(np.argmax(congested))]


def test_agent_raises_the_alerts_the_offline_windows_give_on_real_readings(shipped, data_dir, tmp_path):
    manifest, _ = shipped
    table = load_speeds(data_dir / "traffic" / "los_speed.csv")
    p = DetectorParams.from_dict(manifest["frontend"])
    # the device runs from the first row: it learns the detector's usual speeds day by day as it goes
    start = 0
    det = _busiest_held_out_detector(table, manifest["evaluation"]["val_detectors"],
                                     manifest["evaluation"]["eval_start_row"])
    speeds = table.column(det)

    task = CongestionTask(CongestionTaskConfig(model=SHIPPED, rule=RULE),
                          load_model("congestion", "detector", SHIPPED, OnnxBackendConfig(type="onnxruntime"), tmp_path),
                          timezone="UTC")
    got = []
    for row in range(start, len(speeds)):
        got += task.handle(DetectorReading(det, T0 + row * STEP_MS, float(speeds[row]), 300, None))

    # offline: the training side's windows (usual speeds known each day as evaluation builds them),
    # the model's logits output, the same warning score (congested now counts) and the same rule
    usual = usual_speed_tables(table, p)[..., table.ids.index(det)]
    X, _, _, t = make_windows(speeds, table.time_of_day, table.weekday, p, usual,
                              np.arange(len(speeds)) // p.steps_per_day)
    import onnxruntime as ort

    logits = ort.InferenceSession(str(SHIPPED)).run(["logits"], {"features": X})[0]
    rule, want = Rule(RULE, manifest["labels"]), []
    for row, probs in zip(start + t, softmax(logits)):
        probs[CONGESTED] = warning_score(probs[CONGESTED], speeds[row], POINT, p.congested_mph)
        end = T0 + (row + 1) * STEP_MS
        want += [(e.cls, e.end_ms, e.end_ms - e.start_ms, e.confidence)
                 for e in rule.update(probs, end - p.history_steps * STEP_MS, end)]
    last_end = T0 + (start + t[-1] + 1) * STEP_MS  # the agent goes on for 3 more steps (no target offline)
    got = [(d.cls, d.ts_ms, d.window_ms, d.confidence) for d in got if d.ts_ms <= last_end]
    assert got == want and len(got) >= 1
    # the usual speeds: unknown on the first day (and the first weekend day), known on every evaluation day
    assert not X[t < p.steps_per_day, -1].any()
    assert X[t >= manifest["evaluation"]["eval_start_row"], -1].all()
    # and the warnings are about real congestion: some alert is followed by it within 15 minutes
    alert_rows = [(ts - T0) // STEP_MS - 1 for _, ts, _, _ in got]
    assert any((speeds[r + 1:r + 1 + p.horizon_steps] < p.congested_mph).any() for r in alert_rows)
    assert all(d[0] == "congested" for d in got)
