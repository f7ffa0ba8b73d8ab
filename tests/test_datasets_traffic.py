"""Los-loop speeds: parsing with precise errors, calendar columns, graph, held-out detectors."""

from __future__ import annotations

import numpy as np
import pytest

from agent.features.detector import DetectorParams
from compression.tasks.congestion import traffic
from compression.tasks.congestion.traffic import (TrafficDataError, detector_windows, load_adjacency, load_speeds,
                                          split_detectors)

IDS = ("717447", "717446", "773062")


def _csv(path, header, rows):
    path.write_text("\n".join([",".join(header)] + [",".join(map(str, r)) for r in rows]) + "\n")
    return path


@pytest.fixture
def speed_csv(tmp_path):
    """Two days and a bit (600 steps) of three detectors: a sine around 50 mph."""
    t = np.arange(600)
    rows = [[f"{50 + 15 * np.sin(2 * np.pi * i / 288 + k):.4f}" for k in range(3)] for i in t]
    return _csv(tmp_path / "los_speed.csv", IDS, rows)


def test_speed_table_shape_ids_and_calendar(speed_csv):
    table = load_speeds(speed_csv)
    assert table.ids == IDS
    assert table.speeds.shape == (600, 3) and table.speeds.dtype == np.float32
    assert table.n_missing == 0
    assert table.time_of_day[[0, 1, 287, 288, 599]].tolist() == [0, 1, 287, 0, 23]
    # Row 0 is midnight of Thursday 2012-03-01 (Monday = 0).
    assert table.weekday[[0, 287, 288, 576]].tolist() == [3, 3, 4, 5]
    np.testing.assert_array_equal(table.column("717446"), table.speeds[:, 1])
    with pytest.raises(KeyError, match="detector '1' not in"):
        table.column("1")


def test_calendar_wraps_to_monday_after_sunday(tmp_path):
    table = load_speeds(_csv(tmp_path / "s.csv", ["a"], [[60.0]] * (288 * 5)))
    assert table.weekday[288 * 4 - 1] == 6 and table.weekday[288 * 4] == 0


def test_zeros_and_empty_cells_become_missing_and_are_counted(tmp_path):
    path = _csv(tmp_path / "s.csv", ["a", "b"], [[60, 0], ["", 55.5], [61, "NaN"], [62, 0.0]])
    table = load_speeds(path)
    assert table.n_missing == 4
    assert np.isnan(table.speeds).tolist() == [[False, True], [True, False], [False, True], [False, True]]
    assert table.speeds[1, 1] == pytest.approx(55.5)


def test_non_numeric_cell_is_reported_with_line_row_and_column(speed_csv):
    lines = speed_csv.read_text().splitlines()
    cells = lines[4].split(",")
    cells[1] = "fast"
    lines[4] = ",".join(cells)
    speed_csv.write_text("\n".join(lines) + "\n")
    with pytest.raises(TrafficDataError) as err:
        load_speeds(speed_csv)
    assert str(err.value) == (f"{speed_csv}, line 5 (data row 3), column 2 (detector 717446): "
                              f"'fast' is not a number")


@pytest.mark.parametrize("rows, match", [
    ([[1, 2, 3], [1, 2]], r"line 3: 2 columns, the header has 3"),
    ([[1, -2, 3]], r"line 2 \(data row 0\), column 2 \(detector 717446\): '-2' is not a valid speed"),
    ([[1, 2, "inf"]], r"column 3 .*'inf' is not a valid speed"),
    ([], r"has a header but no data rows"),
])
def test_malformed_rows_are_named(tmp_path, rows, match):
    with pytest.raises(TrafficDataError, match=match):
        load_speeds(_csv(tmp_path / "s.csv", IDS, rows))


def test_bad_header_and_missing_file_are_named(tmp_path):
    with pytest.raises(TrafficDataError, match=r"line 1: duplicate detector id\(s\) \['a'\]"):
        load_speeds(_csv(tmp_path / "dup.csv", ["a", "b", "a"], [[1, 2, 3]]))
    with pytest.raises(TrafficDataError, match=r"cannot read speed file .*nope\.csv"):
        load_speeds(tmp_path / "nope.csv")


def test_adjacency_is_checked_against_the_detectors(tmp_path):
    good = tmp_path / "adj.csv"
    good.write_text("1,0.5,0\n0.5,1,0\n0,0,1\n")
    adj = load_adjacency(good, IDS)
    assert adj.shape == (3, 3) and adj.dtype == np.float32 and adj[0, 1] == 0.5
    with pytest.raises(TrafficDataError, match=r"is 3 rows x \[3\] columns, expected 2 x 2 for the 2 detectors"):
        load_adjacency(good, IDS[:2])
    bad = tmp_path / "bad.csv"
    bad.write_text("1,0,0\n0,1,x\n0,0,1\n")
    with pytest.raises(TrafficDataError, match=r"bad\.csv, line 2, column 3: 'x' is not a number"):
        load_adjacency(bad, IDS)


def test_detector_split_is_seeded_disjoint_and_keeps_file_order():
    ids = [str(700000 + i) for i in range(50)]
    split = split_detectors(ids, val_fraction=0.2, seed=0)
    assert len(split.val) == 10 and len(split.train) == 40
    assert sorted(split.train + split.val) == sorted(ids)
    assert list(split.train) == [i for i in ids if i in split.train]
    assert split_detectors(ids, 0.2, seed=0) == split
    assert split_detectors(ids, 0.2, seed=1).val != split.val
    d = split.to_dict()
    assert (d["seed"], d["val"], len(d["sha256"])) == (0, list(split.val), 64)
    with pytest.raises(ValueError, match="one side would be empty"):
        split_detectors(ids[:2], val_fraction=0.1)


def test_detector_windows_stack_detectors_and_record_which(speed_csv):
    table = load_speeds(speed_csv)
    X, y_state, y_speed, det, t = detector_windows(table, ["773062", "717447"])
    per_detector = 600 - 12 - 3 + 1
    assert X.shape == (2 * per_detector, 15)
    assert det.tolist() == [2] * per_detector + [0] * per_detector
    np.testing.assert_allclose(y_speed[:per_detector], table.column("773062")[t[:per_detector] + 3])
    with pytest.raises(ValueError, match="step_s=600"):
        detector_windows(table, ["773062"], DetectorParams(step_s=600))


# --- the real data --------------------------------------------------------------------


def test_real_los_loop_table_graph_and_split(data_dir):
    root = traffic.find_root(data_dir)
    assert traffic.find_root(root) == root
    table = load_speeds(root / "los_speed.csv")
    assert table.speeds.shape == (2016, 160) and len(set(table.ids)) == 160
    assert table.n_missing == 0  # no zeros or gaps in the shared file today
    assert 0 < np.nanmin(table.speeds) and np.nanmax(table.speeds) <= 80
    assert table.weekday[-1] == 2  # day 6 is Wednesday 2012-03-07
    adj = load_adjacency(root / "los_adj.csv", table.ids)
    assert adj.shape == (160, 160)
    np.testing.assert_array_equal(np.diag(adj), 1.0)
    np.testing.assert_allclose(adj, adj.T)
    split = split_detectors(table.ids, 0.2, seed=0)
    assert (len(split.train), len(split.val)) == (128, 32)
    X, y_state, *_ = detector_windows(table, split.val)
    assert X.shape == (32 * (2016 - 15 + 1), 15)
    assert set(np.unique(y_state)) == {0, 1, 2}  # congestion occurs in the held-out detectors
