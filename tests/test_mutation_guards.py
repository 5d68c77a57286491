"""Tests that kill mutations of tools/mutation_check.py no other test caught.

Each test names the mutation(s) it guards. Expected values are worked out by
hand (in the docstrings) or from an independent NumPy computation, never
taken from the code under test.
"""

import math

import numpy as np
import pytest

from triplet_audio import constants as C
from triplet_audio.evaluation import metrics
from triplet_audio.sampling import pipeline
from triplet_audio.sampling import samplers
from triplet_audio.training import trainer


# ------------------------------------------------------ translation_time_range
def test_time_shift_reaches_both_ends_uniformly():
    """Guards `translation_time_range`: tau is uniform on all of [0, T - 1].

    4,000 draws over T = 96 values: each value is expected ~41.7 times, so
    all of them, both ends included, appear (P(a value is missed) ~ 1e-18).
    """
    tau, shift = samplers.translation_shifts(
        np.array([21, 5], np.int64), 10, [4000])
    counts = np.bincount(tau.numpy(), minlength=C.WINDOW_FRAMES)
    assert counts.size == C.WINDOW_FRAMES  # nothing at T or beyond
    assert counts.min() > 0
    assert tau.numpy().min() == 0 and tau.numpy().max() == C.WINDOW_FRAMES - 1
    assert shift.numpy().min() == -10 and shift.numpy().max() == 10


# ---------------------------------------------------- cosine_normalize_columns
def test_cosine_normalize_scales_rows_to_unit_length():
    """Guards `cosine_normalize_columns`.

    Rows (3, 4) and (0, 2) have norms 5 and 2: (0.6, 0.8) and (0, 1); a zero
    row stays zero.
    """
    x = np.array([[3.0, 4.0], [0.0, 2.0], [0.0, 0.0]])
    np.testing.assert_allclose(metrics.cosine_normalize(x),
                               [[0.6, 0.8], [0.0, 1.0], [0.0, 0.0]],
                               rtol=1e-6)


def test_qbe_ranks_pairs_by_cosine_not_by_dot_product():
    """Guards `cosine_normalize_columns` (and `qbe_dot`) through `qbe_map`.

    Class 0 on p1 = (1, 0) and p2 = (10, 1); n = (1, 50) without it. Pairs:
    (p1, p2) relevant; (p1, n), (p2, n) irrelevant.
      cosine:  p1.p2 = 10 / sqrt(101) = 0.995,
               p1.n = 1 / sqrt(2501) = 0.020,
               p2.n = 60 / (sqrt(101) sqrt(2501)) = 0.119
               -> the relevant pair ranks first: AP = 1.
      dot:     10, 1, 60 -> an irrelevant pair ranks first: AP = 1/2.
      columns scaled to unit norm (norms sqrt(102), sqrt(2502)) instead of
      rows: p1.p2 = 10/102 = 0.098 < p2.n = 10/102 + 50/2502 = 0.118
               -> AP = 1/2.
    """
    embeddings = np.array([[1.0, 0.0], [10.0, 1.0], [1.0, 50.0]])
    labels = np.array([[1], [1], [0]], np.uint8)
    result = metrics.qbe_map(embeddings, labels, num_pos=2, num_neg=1)
    assert result["pairs"] == {"relevant": 1, "irrelevant": 2}
    assert result["per_class"]["0"] == pytest.approx(1.0)
    assert result["chance"] == pytest.approx(1 / 3)


# ----------------------------------------------- lr_warmup_off_by_one, cosine
@pytest.mark.parametrize("step,expected", [
    (0, 0.1),    # warm-up: peak * (step + 1) / warmup
    (4, 0.5),
    (9, 1.0),
    (10, 1.0),   # cosine starts at progress 0
    (60, 0.5),   # progress (60 - 10) / (110 - 10) = 1/2: 0.5 (1 + cos pi/2)
    (85, 0.5 * (1.0 + math.cos(0.75 * math.pi))),
    (110, 0.0),  # the end of the decay
    (200, 0.0),  # clipped past the end
])
def test_warmup_cosine_schedule_hand_values(step, expected):
    """Guards `lr_warmup_off_by_one` and `lr_cosine_span`.

    Peak 1, 110 steps, 10 of them warm-up: linear warm-up reaching the peak
    at step 9, then a half cosine over the remaining 100 steps to 0.
    """
    schedule = trainer.WarmupCosine(1.0, total_steps=110, warmup_steps=10)
    assert float(schedule(step)) == pytest.approx(expected, abs=1e-6)


def _config(lr_schedule):
    return trainer.TrainConfig(
        train_data="/unused", model_dir="/unused",
        sampler=pipeline.SamplerConfig(sampler="noise"), learning_rate=0.01,
        steps=100, warmup_steps=0, lr_schedule=lr_schedule)


def test_constant_schedule_keeps_the_peak_and_cosine_halves_it():
    """Guards `lr_schedule_flag_ignored`.

    --lr_schedule=constant: 0.01 at every step. cosine over 100 steps: at
    step 50, 0.01 * 0.5 * (1 + cos(pi / 2)) = 0.005; at step 100, 0.
    """
    _, constant = trainer.make_optimizer(_config("constant"))
    for step in (0, 50, 99, 100):
        assert float(constant(step)) == pytest.approx(0.01)
    _, cosine = trainer.make_optimizer(_config("cosine"))
    assert float(cosine(50)) == pytest.approx(0.005)
    assert float(cosine(100)) == pytest.approx(0.0, abs=1e-9)
