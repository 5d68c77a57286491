"""Sampler ops against NumPy references, eagerly and inside Dataset.map."""

import math

import numpy as np
import pytest
import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.sampling import samplers

T, F = C.WINDOW_SHAPE
ZERO_LOGMEL = np.float32(np.log(C.LOG_OFFSET))


def _seed(a, b=0):
    return tf.constant([a, b], tf.int64)


def _np_energy(logmel):
    return np.maximum(np.exp(np.asarray(logmel, np.float64)) - C.LOG_OFFSET,
                      0.0)


def _np_logmel(energy):
    return np.log(energy + C.LOG_OFFSET)


def _in_map(fn, *args):
    """Runs fn on args inside a traced Dataset.map and returns NumPy."""
    ds = tf.data.Dataset.from_tensors(tuple(args)).map(fn)
    return tf.nest.map_structure(lambda t: t.numpy(), next(iter(ds)))


def _eager(fn, *args):
    args = tf.nest.map_structure(tf.convert_to_tensor, args)
    return tf.nest.map_structure(lambda t: t.numpy(), fn(*args))


def _assert_same_eager_and_map(fn, *args):
    eager = _eager(fn, *args)
    mapped = _in_map(fn, *args)
    tf.nest.map_structure(np.testing.assert_array_equal, eager, mapped)
    return eager


def _over_seeds(fn, x, seeds):
    """fn(x, seed) for each seed, eagerly and in one Dataset.map; must agree.

    Returns:
      list of eager results.
    """
    x = tf.convert_to_tensor(x)
    eager = [_eager(fn, x, s) for s in seeds]
    ds = tf.data.Dataset.from_tensor_slices(tf.stack(seeds)).map(
        lambda s: fn(x, s))
    mapped = [tf.nest.map_structure(lambda t: t.numpy(), e) for e in ds]
    assert len(mapped) == len(eager)
    for e, m in zip(eager, mapped):
        tf.nest.map_structure(np.testing.assert_array_equal, e, m)
    return eager


def _ks_statistic(samples, cdf):
    """One-sample Kolmogorov-Smirnov statistic sup |F_n - F|."""
    x = np.sort(np.asarray(samples, np.float64))
    n = len(x)
    f = cdf(x)
    return max(np.max(np.arange(1, n + 1) / n - f),
               np.max(f - np.arange(0, n) / n))


def _ks_critical(n, alpha=1e-3):
    # Asymptotic two-sided critical value c(alpha) / sqrt(n).
    return math.sqrt(-0.5 * math.log(alpha / 2)) / math.sqrt(n)


_erf = np.vectorize(math.erf)


def _log_ratio_cdf(sigma):
    # y = log(1 + |eps|), eps ~ N(0, sigma^2):
    # P(y <= v) = P(|eps| <= e^v - 1) = erf((e^v - 1) / (sigma sqrt 2)).
    return lambda v: _erf(np.expm1(v) / (sigma * math.sqrt(2.0)))


@pytest.fixture(name="rng")
def fixture_rng():
    return np.random.default_rng(1234)


def _window(rng, low=-1.0, high=4.0):
    return rng.uniform(low, high, C.WINDOW_SHAPE).astype(np.float32)


# ------------------------------------------------------------------ noise
def test_noise_positive_follows_the_law_cellwise(rng):
    x = _window(rng)
    sigma = 0.5
    p = _assert_same_eager_and_map(
        lambda a, s: samplers.noise_positive(a, s, sigma), x, _seed(3, 7))
    ratio = _np_energy(p) / _np_energy(x)
    # Energy never drops (up to float32 rounding of exp/log).
    assert ratio.min() >= 1.0 - 1e-5
    log_ratio = np.log(np.maximum(ratio, 1.0))
    n = log_ratio.size
    d = _ks_statistic(log_ratio.ravel(), _log_ratio_cdf(sigma))
    assert d < _ks_critical(n), d
    # The test has power: the same sample is far from a sigma = 0.7 law.
    d_wrong = _ks_statistic(log_ratio.ravel(), _log_ratio_cdf(0.7))
    assert d_wrong > 3 * _ks_critical(n), d_wrong


def _half_normal_cdf(v):
    return _erf(np.asarray(v) / math.sqrt(2.0))


def test_half_normal_draws_are_iid_half_normal():
    shape = (3, 101, 64)  # an odd count: the last pair is cut in half
    z = _assert_same_eager_and_map(
        lambda unused, s: samplers.half_normal(shape, s), np.zeros(1),
        _seed(5))
    assert z.shape == shape and z.min() >= 0
    flat = z.ravel()
    n = flat.size
    assert _ks_statistic(flat, _half_normal_cdf) < _ks_critical(n)
    # Power: a normal of scale 1.1 is rejected on the same sample.
    assert _ks_statistic(flat, lambda v: _half_normal_cdf(v / 1.1)) > (
        3 * _ks_critical(n))
    # Independence: the two draws of a Box-Muller pair (half the array
    # apart), neighbouring cells, and |z|^2 (the radius) are uncorrelated.
    half = (n + 1) // 2
    for a, b in ((flat[:n - half], flat[half:]), (flat[:-1], flat[1:]),
                 (flat[:n - half] ** 2, flat[half:] ** 2)):
        assert abs(np.corrcoef(a, b)[0, 1]) < 4 / math.sqrt(len(a))
    other = samplers.half_normal(shape, _seed(6)).numpy()
    assert abs(np.corrcoef(flat, other.ravel())[0, 1]) < 4 / math.sqrt(n)


def test_noise_ks_matches_scipy_when_available(rng):
    stats = pytest.importorskip("scipy.stats")
    x = _window(rng)
    p = samplers.noise_positive(x, _seed(11), 0.5).numpy()
    log_ratio = np.log(np.maximum(_np_energy(p) / _np_energy(x), 1.0)).ravel()
    ours = _ks_statistic(log_ratio, _log_ratio_cdf(0.5))
    theirs = stats.kstest(log_ratio, _log_ratio_cdf(0.5)).statistic
    assert ours == pytest.approx(theirs, abs=1e-12)


def test_noise_is_deterministic_per_seed_and_keeps_silence(rng):
    x = _window(rng)
    a = samplers.noise_positive(x, _seed(1), 0.5).numpy()
    b = samplers.noise_positive(x, _seed(1), 0.5).numpy()
    c = samplers.noise_positive(x, _seed(2), 0.5).numpy()
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0.01
    # Zero energy times anything stays zero energy.
    silent = np.full(C.WINDOW_SHAPE, ZERO_LOGMEL)
    np.testing.assert_array_equal(
        samplers.noise_positive(silent, _seed(1), 0.5).numpy(), silent)


# ------------------------------------------------------------ translation
def _np_translate(x, time_shift, freq_shift):
    rolled = np.roll(x, time_shift, axis=0)
    out = np.full_like(x, ZERO_LOGMEL)
    if freq_shift >= 0:
        out[:, freq_shift:] = rolled[:, :F - freq_shift]
    else:
        out[:, :F + freq_shift] = rolled[:, -freq_shift:]
    return out


def test_translation_equals_roll_then_zero_filled_shift(rng):
    x = _window(rng)
    max_shift = 10
    seen = set()
    seeds = [_seed(5, i) for i in range(12)]
    positives = _over_seeds(
        lambda a, s: samplers.translation_positive(a, s, max_shift), x, seeds)
    for seed, p in zip(seeds, positives):
        tau, shift = (int(v) for v in samplers.translation_shifts(
            seed, max_shift))
        np.testing.assert_array_equal(p, _np_translate(x, tau, shift))
        seen.add(np.sign(shift))
    assert {-1, 1} <= seen  # both directions were exercised


def test_translation_shift_ranges():
    draws = np.array([[int(v) for v in samplers.translation_shifts(
        _seed(9, i), 10)] for i in range(400)])
    tau, shift = draws[:, 0], draws[:, 1]
    assert tau.min() >= 0 and tau.max() <= T - 1
    assert shift.min() == -10 and shift.max() == 10  # extremes are reachable
    assert tau.min() <= 5 and tau.max() >= T - 6
    # Roughly uniform: each frequency shift within 4 sigma of 400 / 21.
    counts = np.bincount(shift + 10, minlength=21)
    p = 1 / 21
    assert np.all(np.abs(counts - 400 * p) <= 4 * math.sqrt(400 * p * (1 - p)))


def test_translation_of_a_batch_shifts_each_window_on_its_own(rng):
    x = np.stack([_window(rng) for _ in range(6)]).reshape(2, 3, T, F)
    p = _assert_same_eager_and_map(
        lambda a, s: samplers.translation_positive(a, s, 10), x, _seed(6))
    taus, shifts = (v.numpy() for v in samplers.translation_shifts(
        _seed(6), 10, [2, 3]))
    for i in range(2):
        for j in range(3):
            np.testing.assert_array_equal(
                p[i, j], _np_translate(x[i, j], taus[i, j], shifts[i, j]))
    assert len(set(zip(taus.ravel(), shifts.ravel()))) > 1


def test_translation_vacated_bins_have_zero_energy(rng):
    x = _window(rng)
    p = samplers.translate(x, 0, 7).numpy()
    np.testing.assert_array_equal(p[:, :7], ZERO_LOGMEL)
    assert _np_energy(p[:, :7]).max() < 1e-8
    np.testing.assert_array_equal(p[:, 7:], x[:, :-7])
    down = samplers.translate(x, 0, -7).numpy()
    np.testing.assert_array_equal(down[:, -7:], ZERO_LOGMEL)
    np.testing.assert_array_equal(down[:, :-7], x[:, 7:])
    for beyond in (C.NUM_MEL_BANDS, -C.NUM_MEL_BANDS - 3):
        np.testing.assert_array_equal(samplers.translate(x, 0, beyond),
                                      np.full_like(x, ZERO_LOGMEL))
    np.testing.assert_array_equal(
        samplers.translation_positive(x, _seed(1), 0).numpy(),
        np.roll(x, int(samplers.translation_shifts(_seed(1), 0)[0]), axis=0))


# ----------------------------------------------------------------- mixing
def _np_mix(xa, xn, alpha):
    ea, en = _np_energy(xa), _np_energy(xn)
    scale = alpha * ea.sum() / en.sum() if en.sum() > 0 else 0.0
    return _np_logmel(ea + scale * en)


def test_mixing_equals_the_formula(rng):
    xa = _window(rng)
    xn = _window(rng, -3.0, 2.0)
    xn[:10] = ZERO_LOGMEL  # some silent frames
    for alpha in (0.25, 1.0):
        p = _assert_same_eager_and_map(
            lambda a, n: samplers.mixing_positive(a, n, alpha), xa, xn)
        np.testing.assert_allclose(p, _np_mix(xa, xn, alpha), rtol=0,
                                   atol=1e-5)
        # Adding energy never lowers a cell.
        assert np.all(p >= xa - 1e-5)


def test_mixing_a_batch_uses_each_pair_s_own_energies(rng):
    xa = np.stack([_window(rng), _window(rng, 1.0, 5.0)])
    xn = np.stack([_window(rng, -3.0, 0.0), _window(rng)])
    p = samplers.mixing_positive(xa, xn, 0.25).numpy()
    for i in range(2):
        np.testing.assert_allclose(p[i], _np_mix(xa[i], xn[i], 0.25),
                                   rtol=0, atol=1e-5)


def test_mixing_with_a_silent_negative_returns_the_anchor(rng):
    xa = _window(rng)
    silent = np.full(C.WINDOW_SHAPE, ZERO_LOGMEL)
    p = samplers.mixing_positive(xa, silent, 0.25).numpy()
    assert np.all(np.isfinite(p))
    np.testing.assert_allclose(p, xa, rtol=0, atol=1e-5)


# --------------------------------------------------------------- proximity
def test_proximity_partners_respect_dt_and_are_uniform():
    times = np.array([0.0, 0.96, 1.92, 2.88, 10.0], np.float32)
    dt = 2.0
    counts = np.zeros((5, 5))
    draws = _over_seeds(lambda t, s: samplers.proximity_partners(t, s, dt),
                        times, [_seed(4, i) for i in range(300)])
    for partner, has in draws:
        for a in range(5):
            if has[a]:
                p = partner[a]
                assert p != a and abs(times[a] - times[p]) < dt
                counts[a, p] += 1
        # Exactly the windows with another window within dt have one.
        np.testing.assert_array_equal(has, [True, True, True, True, False])
    # Window 1 has three candidates (0, 2, 3): each within 4 sigma of 1/3.
    p = 1 / 3
    bound = 4 * math.sqrt(300 * p * (1 - p))
    for j in (0, 2, 3):
        assert abs(counts[1, j] - 300 * p) <= bound


@pytest.mark.parametrize("dt", [0.96, 1.92])
def test_proximity_partners_exclude_a_partner_exactly_dt_apart(dt):
    # The bound is strict: |t_a - t_p| < dt. Start times are multiples of
    # 0.96 s (and 0.5 s), so in float32 some differences equal dt exactly:
    # 0.96 - 0 and 1.92 - 0.96 for dt = 0.96, 1.92 - 0 and 3.84 - 1.92 for
    # dt = 1.92 (float32(1.92) is 2 * float32(0.96)).
    d = np.float32(0.96)
    times = np.array([0.0, 0.5, d, 2 * d, 4 * d], np.float32)
    distance = np.abs(times[:, None] - times[None, :])
    boundary = distance == np.float32(dt)
    assert boundary.sum() == 4, distance  # the construction is exact
    allowed = (distance < np.float32(dt)) & ~np.eye(times.size, dtype=bool)
    expected_has = allowed.any(axis=1)
    # One window's only other window near it is exactly dt away: it has no
    # partner (window 3 for dt = 0.96, window 4 for dt = 1.92); window 0 has
    # an allowed partner and a boundary one.
    only_boundary = boundary.any(axis=1) & ~expected_has
    assert only_boundary.sum() == 1
    assert expected_has[0] and boundary[0].any()
    draws = _over_seeds(lambda t, s: samplers.proximity_partners(t, s, dt),
                        times, [_seed(9, i) for i in range(40)])
    chosen = np.zeros_like(allowed)
    for partner, has in draws:
        np.testing.assert_array_equal(has, expected_has)
        for a in np.flatnonzero(has):
            assert allowed[a, partner[a]], (a, partner[a], distance[a])
            chosen[a, partner[a]] = True
    # Every allowed partner of window 0 turns up (so a wrongly allowed
    # boundary partner would have too).
    np.testing.assert_array_equal(chosen[0], allowed[0])


def test_proximity_partners_single_window_and_infinite_dt():
    partner, has = samplers.proximity_partners(
        np.zeros([1], np.float32), _seed(1), math.inf)
    assert not has.numpy()[0]
    partner, has = samplers.proximity_partners(
        np.arange(6, dtype=np.float32) * 100, _seed(1), math.inf)
    assert has.numpy().all()
    assert np.all(partner.numpy() != np.arange(6))


# ----------------------------------------------------- dict -> dict samplers
def _pairs(rng, k=3):
    return {
        samplers.LOGMEL: np.stack([np.stack([_window(rng), _window(rng)])
                                   for _ in range(k)]),
        samplers.WINDOW_ID: np.arange(2 * k, dtype=np.int64).reshape(k, 2) + 10,
        samplers.RECORDING_ID: np.array([["r%d" % (2 * i), "r%d" % (2 * i + 1)]
                                         for i in range(k)]),
    }


@pytest.mark.parametrize("name", ["noise", "translation", "mixing"])
def test_augmentation_samplers_layout(rng, name):
    k = 3
    pairs = _pairs(rng, k)
    fn = {
        "noise": lambda p, s: samplers.noise_sampler(p, s, 0.5),
        "translation": lambda p, s: samplers.translation_sampler(p, s, 10),
        "mixing": lambda p, s: samplers.mixing_sampler(p, s, 0.25),
    }[name]
    t = _assert_same_eager_and_map(fn, pairs, _seed(8))
    logmel, ids = pairs[samplers.LOGMEL], pairs[samplers.WINDOW_ID]
    rids = pairs[samplers.RECORDING_ID]
    np.testing.assert_array_equal(t[samplers.ANCHOR], logmel[:, 0])
    np.testing.assert_array_equal(t[samplers.NEGATIVE], logmel[:, 1])
    np.testing.assert_array_equal(
        t[samplers.LABELS], np.stack([ids[:, 0], ids[:, 0], ids[:, 1]], 1))
    np.testing.assert_array_equal(t[samplers.SAMPLER],
                                  [samplers.sampler_index(name)] * k)
    np.testing.assert_array_equal(
        t[samplers.RECORDING_IDS],
        np.stack([rids[:, 0], rids[:, 0], rids[:, 1]], 1).astype(bytes))
    assert t[samplers.VALID].all()
    if name == "mixing":
        for i in range(k):
            np.testing.assert_allclose(
                t[samplers.POSITIVE][i], _np_mix(logmel[i, 0], logmel[i, 1],
                                                 0.25), atol=1e-5, rtol=0)
    elif name == "translation":
        taus, shifts = samplers.translation_shifts(_seed(8), 10, [k])
        for i in range(k):
            np.testing.assert_array_equal(
                t[samplers.POSITIVE][i],
                _np_translate(logmel[i, 0], int(taus[i]), int(shifts[i])))
        assert len(set(taus.numpy().tolist())) > 1  # a shift per triplet
    else:
        assert np.all(t[samplers.POSITIVE] >= logmel[:, 0] - 1e-5)
        diff = np.abs(t[samplers.POSITIVE] - logmel[:, 0]).max(axis=(1, 2))
        assert np.all(diff > 0.01)
        # Rows get independent noise, not one pattern repeated.
        ratios = _np_energy(t[samplers.POSITIVE]) / _np_energy(logmel[:, 0])
        assert not np.allclose(ratios[0], ratios[1])


# One row per case: (has_partner, recording ids, anchor element, valid).
_PROXIMITY_CASES = [
    ((True, True), ("a", "b"), 0, True),
    ((False, True), ("a", "b"), 1, True),  # single-window element: negative
    ((True, False), ("a", "b"), 0, True),
    ((False, False), ("a", "b"), 1, False),
    ((True, True), ("a", "a"), 0, False),  # one recording: no negative
]


def test_proximity_sampler_choice(rng):
    k = len(_PROXIMITY_CASES)
    pairs = {
        samplers.LOGMEL: np.stack([
            np.stack([np.stack([_window(rng), _window(rng)])
                      for _ in range(2)]) for _ in range(k)]),
        samplers.HAS_PARTNER: np.array([c[0] for c in _PROXIMITY_CASES]),
        samplers.RECORDING_ID: np.array([c[1] for c in _PROXIMITY_CASES]),
        samplers.RECORDING_HASH: np.array([[101, 202]] * k, np.int64),
    }
    t = _assert_same_eager_and_map(samplers.proximity_sampler, pairs)
    valid = _assert_same_eager_and_map(samplers.proximity_pair_valid, pairs)
    np.testing.assert_array_equal(valid, t[samplers.VALID])
    logmel = pairs[samplers.LOGMEL]
    hashes = pairs[samplers.RECORDING_HASH][0]
    for i, (_, _, anchor, ok) in enumerate(_PROXIMITY_CASES):
        neg = 1 - anchor
        np.testing.assert_array_equal(t[samplers.ANCHOR][i],
                                      logmel[i, anchor, 0])
        np.testing.assert_array_equal(t[samplers.POSITIVE][i],
                                      logmel[i, anchor, 1])
        np.testing.assert_array_equal(t[samplers.NEGATIVE][i],
                                      logmel[i, neg, 0])
        np.testing.assert_array_equal(
            t[samplers.LABELS][i], [hashes[anchor], hashes[anchor],
                                    hashes[neg]])
        assert bool(t[samplers.VALID][i]) == ok, i


def test_window_and_recording_ids_are_stable_and_distinct():
    ids = samplers.window_id(
        tf.constant(["a", "a", "a#1", "b"]), tf.constant([0, 0, 2, 0]),
        tf.constant([0, 1, 3, 0])).numpy()
    again = samplers.window_id(
        tf.constant(["a", "a", "a#1", "b"]), tf.constant([0, 0, 2, 0]),
        tf.constant([0, 1, 3, 0])).numpy()
    np.testing.assert_array_equal(ids, again)
    assert len(set(ids.tolist())) == 4
    assert ids.dtype == np.int64 and np.all(ids >= 0)
    rec = samplers.recording_hash(tf.constant(["a", "b"])).numpy()
    assert rec[0] != rec[1] and not set(rec.tolist()) & set(ids.tolist())
