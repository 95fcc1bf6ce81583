"""Work that can travel (issue 30): the evaluation of a shard of images and one INT8 search trial are
plain functions of picklable inputs, with no torch object inside, so an executor can run them in
another process or on another node and get the answer this process gets.

Both work items are pickled, unpickled and run in a fresh process that never imports torch; the
answers are compared with the ones computed here and through the local executor.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import digit_folder

from resnest_deploy.data import Transform, digits, digits_batch
from resnest_deploy.executors import LocalExecutor
from resnest_deploy.executors.work import ArtifactRef, ClassifyJob, classify_shard
from resnest_deploy.models import get_spec
from resnest_deploy.precision.search import Metric, TrialInputs, trial, units

#: the fresh process: unpickle (fn, args), run it, print its answer and the torch modules it loaded
RUN_ELSEWHERE = """
import pickle, sys
fn, args = pickle.load(open(sys.argv[1], "rb"))
loaded = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
result = fn(*args)
after = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
pickle.dump((result, loaded, after), open(sys.argv[2], "wb"))
"""


def run_elsewhere(tmp_path: Path, fn: object, *args: object) -> object:
    """``fn(*args)`` in a fresh Python process, everything through pickle; that process must not
    import torch, neither to unpickle the work nor to run it."""
    (tmp_path / "work.pkl").write_bytes(pickle.dumps((fn, args)))
    done = subprocess.run(
        [sys.executable, "-c", RUN_ELSEWHERE, str(tmp_path / "work.pkl"), str(tmp_path / "out.pkl")],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result, loaded, after = pickle.loads((tmp_path / "out.pkl").read_bytes())
    assert loaded == [] and after == [], (loaded, after)  # no torch to unpickle it, none to run it
    return result


@pytest.fixture(scope="module")
def transform() -> Transform:
    return Transform.from_pretrained(get_spec("resnest14d_digits").pretrained)


def test_a_shard_of_images_travels_and_gives_the_same_outcomes(tmp_path, digits_onnx, transform):
    folder = digit_folder(tmp_path / "val", per_class=3)
    items = [(i, str(p)) for i, p in enumerate(sorted(folder.rglob("*.png")))]
    job = ClassifyJob(ArtifactRef.of(digits_onnx), transform, topk=3)  # the default runner options
    assert pickle.loads(pickle.dumps(job)) == job and pickle.loads(pickle.dumps(items)) == items

    here = classify_shard(job, items)
    assert len(here) == len(items) and all(o.error is None for o in here)
    assert LocalExecutor().classify(job, items).outcomes == here  # the executor interface, locally
    assert run_elsewhere(tmp_path, classify_shard, job, items) == here  # image for image, exactly


def test_one_int8_search_trial_travels_and_gives_the_same_number(tmp_path, digits_onnx, transform):
    import onnx

    from resnest_deploy.precision import calibration
    from resnest_deploy.precision.fixtures import quantize_every_conv
    from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner

    int8 = quantize_every_conv(digits_onnx, tmp_path / "int8.onnx", "cpu", calibration.from_digits(transform))
    model = onnx.load(int8.path)
    images, labels = digits("test")
    x = digits_batch(images[:128], transform)
    with OnnxRuntimeRunner(str(digits_onnx)) as runner:
        reference = runner.infer_batched(x, 64)
    inputs = TrialInputs.of(model, Metric(x, labels[:128], reference, False, onnx.load(digits_onnx)))
    layers = tuple(units(model)["stem"])

    back = pickle.loads(pickle.dumps(inputs))
    assert isinstance(back.model, bytes) and back.model == inputs.model and back.source == inputs.source
    assert np.array_equal(back.x, inputs.x) and np.array_equal(back.reference, inputs.reference)
    assert json.dumps(layers)  # the item of a trial: plain node names

    here = trial(inputs, layers)
    assert 0.0 <= here <= 100.0
    assert LocalExecutor().map(trial, inputs, [layers]) == [here]  # the executor interface, locally
    assert run_elsewhere(tmp_path, trial, inputs, layers) == here  # the same number in another process
