"""One top-k accuracy (``metrics``), per image, on numbers that can be checked by hand, and the three
places that score through it (parity, the INT8 search, ``eval``) giving those same numbers."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from resnest_deploy import metrics
from resnest_deploy.compare import compare
from resnest_deploy.data import digits, digits_batch
from resnest_deploy.data.classes import class_names, imagenet_classes
from resnest_deploy.metrics import Paired, TopK
from resnest_deploy.precision.search import Metric
from resnest_deploy.runners.onnxruntime import OnnxRuntimeRunner

# 4 images x 3 classes. Best classes, best first: [1, 2, 0], [0, 1, 2], [2, 0, 1], [0, 2, 1]
REFERENCE = np.array([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2], [0.2, 0.1, 0.6], [0.6, 0.1, 0.3]])
LABELS = np.array([1, 1, 2, 1])
# best first: [2, 1, 0], [0, 2, 1], [2, 0, 1], [2, 1, 0]; the reference's top-1 is 1, 0, 2, 0
CANDIDATE = np.array([[0.1, 0.2, 0.7], [0.9, 0.0, 0.1], [0.3, 0.2, 0.5], [0.1, 0.3, 0.6]])


def test_outcomes_per_image_against_labels_at_each_k():
    assert metrics.ranked(REFERENCE, 2).tolist() == [[1, 2], [0, 1], [2, 0], [0, 2]]
    assert metrics.outcomes(REFERENCE, LABELS, 1).tolist() == [True, False, True, False]
    assert metrics.outcomes(REFERENCE, LABELS, 2).tolist() == [True, True, True, False]
    assert metrics.outcomes(REFERENCE, LABELS, 3).tolist() == [True] * 4
    assert metrics.accuracy(metrics.outcomes(REFERENCE, LABELS, 1)) == 0.5
    assert metrics.accuracy(metrics.outcomes(REFERENCE, LABELS, 2)) == 0.75
    top = TopK.of_logits(REFERENCE, LABELS)  # "top-5" of 3 classes: every class
    assert (top.images, top.top1_accuracy, top.top5_accuracy) == (4, 0.5, 1.0)


def test_agreement_with_a_reference_top1_is_what_counts_without_labels():
    assert metrics.reference_top1(REFERENCE).tolist() == [1, 0, 2, 0]
    assert metrics.agreement(CANDIDATE, REFERENCE, 1).tolist() == [False, True, True, False]
    assert metrics.agreement(CANDIDATE, REFERENCE, 2).tolist() == [True, True, True, False]
    assert metrics.correct(CANDIDATE, None, REFERENCE).tolist() == [False, True, True, False]
    assert metrics.correct(CANDIDATE, LABELS, REFERENCE).tolist() == [False, False, True, False]


def test_ranked_classes_as_a_worker_returns_them_and_ties():
    # what eval scores: each image's classes, best first, as long as the worker kept them
    assert metrics.hits([(3, 1, 2), (0,)], [1, 0], k=2).tolist() == [True, True]
    assert metrics.hits([(3, 1, 2), (0,)], [1, 0], k=1).tolist() == [False, True]
    top = TopK.of_ranked([(3, 1, 2, 4, 5, 6), (6, 5, 4, 3, 2, 0)], [5, 0])
    assert top.top1.tolist() == [False, False] and top.top5.tolist() == [True, False]
    assert metrics.ranked([[1.0, 1.0, 0.0]], 1).tolist() == [[0]]  # top-1 is argmax's: the lower index
    assert np.isnan(metrics.accuracy(np.zeros(0, dtype=bool)))


def test_paired_outcomes_count_the_discordant_images():
    with_labels = metrics.paired(REFERENCE, CANDIDATE, LABELS)
    assert with_labels.reference.tolist() == [True, False, True, False]
    assert with_labels.candidate.tolist() == [False, False, True, False]
    assert (with_labels.reference_only, with_labels.candidate_only, with_labels.both) == (1, 0, 1)
    assert with_labels.drop == 25.0  # one image of four
    without = metrics.paired(REFERENCE, CANDIDATE)  # against FP32's own top-1: FP32 right everywhere
    assert without.reference.all() and (without.reference_only, without.candidate_only) == (2, 0)
    assert without.drop == 50.0
    swapped = Paired(with_labels.candidate, with_labels.reference)
    assert swapped.drop == -25.0 and swapped.candidate_only == 1


def test_bad_input_is_refused_with_a_sentence():
    with pytest.raises(ValueError, match="one target per image"):
        metrics.outcomes(REFERENCE, LABELS[:3])
    with pytest.raises(ValueError, match="at least 1"):
        metrics.ranked(REFERENCE, 0)
    with pytest.raises(ValueError, match="one flag per image"):
        Paired(np.ones(3, dtype=bool), np.ones(4, dtype=bool))
    with pytest.raises(ValueError, match="same images"):
        metrics.paired(REFERENCE, CANDIDATE[:2])


def test_parity_and_the_int8_search_read_the_same_numbers():
    m = compare(REFERENCE, CANDIDATE)
    assert (m.top1, m.top5) == (0.5, 1.0)
    labelled = Metric(np.zeros((4, 3, 1, 1), np.float32), LABELS, REFERENCE, False)
    assert (labelled.fp32, labelled.of_logits(CANDIDATE), labelled.name) == (50.0, 25.0, "top-1")
    assert labelled.outcomes(CANDIDATE).tolist() == [False, False, True, False]
    unlabelled = Metric(np.zeros((4, 3, 1, 1), np.float32), None, REFERENCE, False)
    assert (unlabelled.fp32, unlabelled.of_logits(CANDIDATE)) == (100.0, 50.0)


def test_the_digits_model_on_its_899_test_images(digits_onnx):
    from resnest_deploy.data import Transform
    from resnest_deploy.models import get_spec

    images, labels = digits("test")
    x = digits_batch(images, Transform.from_pretrained(get_spec("resnest14d_digits").pretrained))
    with OnnxRuntimeRunner(digits_onnx) as runner:
        logits = runner.infer_batched(x, 64)
    top = TopK.of_logits(logits, labels)
    assert top.images == 899 and int(top.top1.sum()) == 894  # 99.44%, the figure the docs give
    assert top.top5_accuracy == 1.0
    assert Metric(x, labels, logits, False).fp32 == pytest.approx(99.44, abs=0.01)
    assert compare(logits, logits).top1 == 1.0


def test_class_names_live_in_the_data_package():
    from resnest_deploy import predict
    from resnest_deploy.deepstream import class_labels
    from resnest_deploy.serving.repository import labels_for

    assert imagenet_classes()[0] == ("n01440764", "tench") and len(imagenet_classes()) == 1000
    assert class_names(1000)[1] == "goldfish" and class_names(3) == ["0", "1", "2"]
    assert labels_for(1000) == class_labels(1000) == predict.class_names(1000) == class_names(1000)


def test_metrics_and_model_descriptions_import_no_torch():
    code = (
        "import sys\n"
        "import resnest_deploy.metrics, resnest_deploy.models.config, resnest_deploy.models\n"
        "resnest_deploy.models.parts('resnest50')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
