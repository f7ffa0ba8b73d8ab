"""Per model: teacher FP32 vs student FP32 vs student INT8 (onnxruntime CPU, one thread), and the
student as TensorRT FP16 / INT8 engines where ``tensorrt`` is importable.

Each variant is timed end to end, the way a device pays for it: its own front-end (for the
noise teacher: 16 -> 32 kHz resampling and the 128-mel log-mel) plus the model,
- at batch 1 (latency of one window / image / detector window), and
- at batch ``N_ITEMS`` (throughput: the front-end of every item, one model call),
normalised per unit (second of audio, image, window). Ratios against the teacher, from the
same run, are printed at the end and written beside the JSON (see conftest.py).
Nothing here asserts a time.
"""

from __future__ import annotations

import numpy as np
import pytest

import inputs
from variants import VARIANTS, Unavailable, check_input, resolve, runner


@pytest.fixture(scope="session")
def work(tmp_path_factory):
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="session")
def task_inputs(data_dir):
    cache: dict = {}

    def get(task: str) -> inputs.TaskInputs:
        if task not in cache:
            try:
                cache[task] = inputs.TASKS[task](data_dir)
            except (OSError, KeyError) as e:
                cache[task] = e
        if isinstance(cache[task], Exception):
            pytest.skip(f"{task}: inputs unavailable ({type(cache[task]).__name__}: {cache[task]})")
        return cache[task]

    return get


@pytest.fixture(scope="session")
def variant(work, task_inputs):
    cache: dict = {}

    def get(task: str, name: str):
        if name.endswith("_trt"):  # the reason that matters first: no TensorRT on this machine
            pytest.importorskip("tensorrt", reason="TensorRT is not installed here (JetPack provides it on a device)")
        if (task, name) not in cache:
            try:
                ins = task_inputs(task) if name == "student_int8" else None
                calib = (lambda: ins.calibration(_student_frontend(task))) if ins else None
                cache[(task, name)] = resolve(task, name, work, calib)
            except Unavailable as e:
                cache[(task, name)] = e
        v = cache[(task, name)]
        if isinstance(v, Unavailable):
            pytest.skip(str(v))
        return v

    return get


def _student_frontend(task: str) -> dict:
    from variants import shipped

    return shipped(task)[1]["frontend"]


def _prepare(task_inputs, variant, work, task: str, name: str):
    """(inputs, variant, model runner, front-end) once the model is known to take its front-end's output."""
    ins = task_inputs(task)
    v = variant(task, name)
    fe = ins.frontend(v.frontend)
    try:
        check_input(v, fe(ins.items[0]))
    except Unavailable as e:
        pytest.skip(str(e))
    return ins, v, runner(v, work), fe


def _record(benchmark, group: str, v, ins: inputs.TaskInputs, n_items: int) -> None:
    benchmark.extra_info.update(compare=group, per=ins.per_item * n_items, unit=ins.unit, params=v.params,
                                model=v.name, lineage=v.lineage, baseline=v.name == "teacher fp32")
    benchmark.group = group  # pytest-benchmark's own table, one section per comparison
    benchmark.name = v.name


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("task", list(inputs.TASKS))
def test_batch1_latency(benchmark, task, name, task_inputs, variant, work):
    ins, v, run, fe = _prepare(task_inputs, variant, work, task, name)
    item = ins.items[0]
    _record(benchmark, f"{task}: front-end + model, batch 1, per {ins.unit}", v, ins, 1)
    out = benchmark(lambda: run(fe(item)[None]))
    assert np.isfinite(out).all() and out.shape[0] == 1


@pytest.mark.parametrize("name", VARIANTS)
@pytest.mark.parametrize("task", list(inputs.TASKS))
def test_batch_throughput(benchmark, task, name, task_inputs, variant, work):
    ins, v, run, fe = _prepare(task_inputs, variant, work, task, name)
    _record(benchmark, f"{task}: front-end + model, batch {len(ins.items)}, per {ins.unit}", v, ins, len(ins.items))
    out = benchmark(lambda: run(np.stack([fe(x) for x in ins.items])))
    assert np.isfinite(out).all() and out.shape[0] == len(ins.items)
