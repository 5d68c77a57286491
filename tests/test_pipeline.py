"""The triplet input pipeline on small generated corpora.

Every window of a test corpus is random, so its bytes identify it: the tests
look each sampled window up to learn its recording, chunk, index, start time
and labels, and check the sampler's contract against that ground truth.
"""

import dataclasses
import json
import math
import os
import shutil
import struct

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest
import tensorflow as tf

from triplet_audio.config import options
from triplet_audio.config import jsonio
from triplet_audio import constants as C
from triplet_audio.cli import flagdefs
from triplet_audio.sampling import inspect_triplets
from triplet_audio.sampling import pipeline
from triplet_audio.features import records
from triplet_audio.sampling import samplers

NUM_CLASSES = 4
NUM_SHARDS = 4
BUFFER = 32


@dataclasses.dataclass(frozen=True)
class WindowInfo:
    recording_id: str
    chunk: int
    index: int
    start: float
    labels: tuple


def _recording_specs():
    """(recording id, windows per chunk, labels) of the test corpus."""
    specs = []
    counts = [1, 2, 3, 4, 6, 1, 5, 2]
    for r in range(24):
        if r % 6 == 0:
            labels = ()
        elif r % 3 == 0:
            labels = (r % NUM_CLASSES, (r + 1) % NUM_CLASSES)
        else:
            labels = (r % NUM_CLASSES,)
        specs.append(("rec%02d" % r, [counts[r % len(counts)]], labels))
    # A long recording written as two chunks: one recording, two records.
    specs.append(("long#rec", [4, 3], (1,)))
    return specs


def write_corpus(directory, specs, num_shards, seed=0, manifest_classes=None):
    """Writes records of random windows; returns {window bytes: WindowInfo}."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    lookup = {}
    writers = [tf.io.TFRecordWriter(os.path.join(
        directory, records.shard_name(i, num_shards)))
        for i in range(num_shards)]
    for r, (rid, chunks, labels) in enumerate(specs):
        start = 0
        for chunk, count in enumerate(chunks):
            logmel = rng.uniform(-3.0, 3.0, (count,) + C.WINDOW_SHAPE).astype(
                np.float32)
            times = (start + np.arange(count)) * C.WINDOW_SECONDS
            for i in range(count):
                lookup[logmel[i].tobytes()] = WindowInfo(
                    rid, chunk, i, float(np.float32(times[i])), tuple(labels))
            example = records.make_example(logmel, times, rid, labels=labels,
                                           chunk_index=chunk)
            # Chunks of a recording stay in one shard, as the extractor does.
            writers[r % num_shards].write(example.SerializeToString())
            start += count
    for w in writers:
        w.close()
    if manifest_classes is not None:
        with open(os.path.join(directory, records.MANIFEST_NAME), "w") as f:
            json.dump({"classes": list(manifest_classes)}, f)
    return lookup


@pytest.fixture(scope="module", name="corpus")
def fixture_corpus(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("corpus"))
    lookup = write_corpus(directory, _recording_specs(), NUM_SHARDS,
                          manifest_classes=["c%d" % i for i in
                                            range(NUM_CLASSES)])
    return directory, lookup


def _config(name, **kwargs):
    kwargs.setdefault("shuffle_buffer", BUFFER)
    return pipeline.SamplerConfig(sampler=name, **kwargs)


def _triplets(directory, config, count=None, **kwargs):
    kwargs.setdefault("repeat", count is not None)
    ds = pipeline.make_triplets(directory, config, num_classes=NUM_CLASSES,
                                **kwargs)
    if count is not None:
        ds = ds.take(count)
    return [{k: v.numpy() for k, v in t.items()} for t in ds]


def _info(lookup, window):
    return lookup[np.asarray(window, np.float32).tobytes()]


def _window_id(info):
    return int(samplers.window_id(info.recording_id, info.chunk, info.index))


def _recording_hash(rid):
    return int(samplers.recording_hash(rid))


def _hot(labels):
    hot = np.zeros(NUM_CLASSES, np.float32)
    hot[list(labels)] = 1
    return hot


# ------------------------------------------------------------------ layout
def _np_mix(anchor, negative, alpha=0.25):
    ea = np.maximum(np.exp(anchor.astype(np.float64)) - C.LOG_OFFSET, 0)
    en = np.maximum(np.exp(negative.astype(np.float64)) - C.LOG_OFFSET, 0)
    return np.log(ea + alpha * ea.sum() / en.sum() * en + C.LOG_OFFSET)


@pytest.mark.parametrize("name", ["mixing", "joint"])
def test_batches_interleave_anchor_positive_negative(corpus, name):
    directory, lookup = corpus
    ds = pipeline.make_triplet_dataset(directory, _config(name), 12, seed=3)
    # Static shapes: XLA and TPU input pipelines need them.
    assert ds.element_spec[0].shape == (12,) + C.WINDOW_SHAPE
    assert ds.element_spec[1].shape == (12,)
    for windows, labels in ds.take(3):
        assert windows.shape == (12,) + C.WINDOW_SHAPE
        assert windows.dtype == tf.float32 and labels.dtype == tf.int64
        windows, labels = windows.numpy(), labels.numpy()
        for i in range(4):
            a, p, n = windows[3 * i:3 * i + 3]
            la, lp, ln = labels[3 * i:3 * i + 3]
            info_a, info_n = _info(lookup, a), _info(lookup, n)
            assert la == lp
            if name == "mixing":
                np.testing.assert_allclose(p, _np_mix(a, n), atol=1e-5,
                                           rtol=0)
                assert (la, ln) == (_window_id(info_a), _window_id(info_n))
            else:
                # joint with proximity labels every window by its recording,
                # whichever sampler made the triplet.
                assert (la, ln) == (_recording_hash(info_a.recording_id),
                                    _recording_hash(info_n.recording_id))


def test_batch_size_must_hold_whole_triplets(corpus):
    directory, _ = corpus
    with pytest.raises(ValueError, match="batch_size"):
        pipeline.make_triplet_dataset(directory, _config("noise"), 10)
    three_replicas = tf.distribute.InputContext(
        num_input_pipelines=1, input_pipeline_id=0, num_replicas_in_sync=3)
    with pytest.raises(ValueError, match="per replica"):
        pipeline.make_triplet_dataset(directory, _config("noise"), 6,
                                      input_context=three_replicas)


# ---------------------------------------------------- augmentation samplers
@pytest.mark.parametrize("name", ["noise", "translation", "mixing"])
def test_augmentation_samplers_on_a_corpus(corpus, name):
    directory, lookup = corpus
    triplets = _triplets(directory, _config(name), seed=1)
    # One pass: windows are paired two by two, each used once.
    assert len(triplets) == len(lookup) // 2
    used = []
    for t in triplets:
        a = _info(lookup, t[samplers.ANCHOR])
        n = _info(lookup, t[samplers.NEGATIVE])
        used += [a, n]
        np.testing.assert_array_equal(
            t[samplers.LABELS], [_window_id(a), _window_id(a), _window_id(n)])
        assert list(t[samplers.RECORDING_IDS]) == [
            a.recording_id.encode()] * 2 + [n.recording_id.encode()]
        assert t[samplers.SAMPLER] == samplers.sampler_index(name)
        if name == "mixing":
            np.testing.assert_allclose(
                t[samplers.POSITIVE],
                _np_mix(t[samplers.ANCHOR], t[samplers.NEGATIVE]),
                atol=1e-5, rtol=0)
        elif name == "noise":
            assert np.all(t[samplers.POSITIVE] >= t[samplers.ANCHOR] - 1e-5)
    assert len(set(used)) == len(used)


# ---------------------------------------------------------------- proximity
@pytest.mark.parametrize("dt", [math.inf, 2.0])
def test_proximity_pairs_share_a_recording_within_dt(corpus, dt):
    directory, lookup = corpus
    triplets = _triplets(directory, _config("proximity", proximity_dt=dt),
                         count=150, seed=2)
    single = {i.recording_id for i in lookup.values()
              if sum(j.recording_id == i.recording_id
                     for j in lookup.values()) == 1}
    assert single  # the corpus has single-window recordings
    negatives = set()
    for t in triplets:
        a = _info(lookup, t[samplers.ANCHOR])
        p = _info(lookup, t[samplers.POSITIVE])
        n = _info(lookup, t[samplers.NEGATIVE])
        assert a.recording_id == p.recording_id
        assert (a.chunk, a.index) != (p.chunk, p.index)
        assert a.chunk == p.chunk  # pairs never span two records
        assert abs(a.start - p.start) < dt
        assert n.recording_id != a.recording_id
        assert a.recording_id not in single
        negatives.add(n.recording_id)
        np.testing.assert_array_equal(
            t[samplers.LABELS],
            [_recording_hash(a.recording_id)] * 2 +
            [_recording_hash(n.recording_id)])
    # Single-window recordings are not anchors but still serve as negatives.
    assert negatives & single


def test_proximity_on_single_window_recordings_ends_instead_of_hanging(
        tmp_path):
    specs = [("solo%d" % i, [1], ()) for i in range(6)]
    write_corpus(str(tmp_path), specs, 2)
    ds = pipeline.make_triplet_dataset(str(tmp_path), _config("proximity"), 3,
                                       repeat=True)
    assert not list(ds.take(5))


# --------------------------------------------------------------- supervised
def test_supervised_pairs_share_a_class_and_negatives_lack_it(corpus):
    directory, lookup = corpus
    triplets = _triplets(directory, _config("supervised"), count=120, seed=4)
    classes = set()
    for t in triplets:
        a = _info(lookup, t[samplers.ANCHOR])
        p = _info(lookup, t[samplers.POSITIVE])
        n = _info(lookup, t[samplers.NEGATIVE])
        assert a.labels and p.labels and n.labels  # unlabelled never used
        assert (a.recording_id, a.chunk, a.index) != (
            p.recording_id, p.chunk, p.index)
        shared = set(a.labels) & set(p.labels)
        assert shared
        assert not set(a.labels) & set(n.labels)
        classes |= shared
        np.testing.assert_array_equal(
            t[samplers.LABELS], [_hot(a.labels), _hot(p.labels),
                                 _hot(n.labels)])
    assert len(classes) >= 3  # every class gets pairs, not just one


def test_supervised_reads_num_classes_from_the_manifest(corpus, tmp_path):
    directory, _ = corpus
    ds = pipeline.make_triplet_dataset(directory, _config("supervised"), 6,
                                       seed=0)
    assert ds.element_spec[1].shape == (6, NUM_CLASSES)
    windows, labels = next(iter(ds))
    assert labels.shape == (6, NUM_CLASSES) and labels.dtype == tf.float32
    assert windows.shape == (6,) + C.WINDOW_SHAPE
    write_corpus(str(tmp_path), _recording_specs()[:4], 1)
    with pytest.raises(ValueError, match="num_classes"):
        pipeline.make_triplet_dataset(str(tmp_path), _config("supervised"), 6)


def test_supervised_rejects_labels_outside_the_vocabulary(tmp_path):
    write_corpus(str(tmp_path), [("r0", [2], (7,)), ("r1", [2], (0,))], 1)
    # Named when the pipeline is built, before any step runs.
    with pytest.raises(ValueError, match="'r0' has label 7.*vocabulary"):
        pipeline.make_triplet_dataset(str(tmp_path), _config("supervised"), 3,
                                      num_classes=NUM_CLASSES, repeat=False)


# -------------------------------------------------------------------- joint
def test_joint_mixes_samplers_by_weight(corpus):
    directory, _ = corpus
    weights = {"noise": 1.0, "translation": 2.0, "mixing": 0.0,
               "proximity": 1.0}
    n = 480
    triplets = _triplets(directory, _config("joint", joint_weights=weights),
                         count=n, seed=5)
    assert len(triplets) == n
    counts = {}
    for t in triplets:
        name = options.SAMPLERS[t[samplers.SAMPLER]]
        counts[name] = counts.get(name, 0) + 1
        assert t[samplers.LABELS].dtype == np.int64
    assert "mixing" not in counts
    total = sum(weights.values())
    for name in ("noise", "translation", "proximity"):
        p = weights[name] / total
        assert abs(counts[name] - n * p) <= 4 * math.sqrt(n * p * (1 - p)), (
            name, counts)


# -------------------------------------------------------------- determinism
@pytest.mark.parametrize("name", options.SAMPLERS)
def test_same_seed_same_batches_other_seed_differs(corpus, name):
    directory, _ = corpus

    def first_batches(seed):
        ds = pipeline.make_triplet_dataset(directory, _config(name), 6,
                                           seed=seed, num_classes=NUM_CLASSES)
        return [(w.numpy(), l.numpy()) for w, l in ds.take(2)]

    a, b, c = first_batches(7), first_batches(7), first_batches(8)
    for (wa, la), (wb, lb) in zip(a, b):
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(la, lb)
    assert any(not np.array_equal(wa, wc) for (wa, _), (wc, _) in zip(a, c))


# ----------------------------------------------------------------- sharding
def _contexts(n):
    return [tf.distribute.InputContext(num_input_pipelines=n,
                                       input_pipeline_id=i,
                                       num_replicas_in_sync=n)
            for i in range(n)]


def test_input_pipelines_read_disjoint_shards(corpus):
    directory, lookup = corpus
    paths = [pipeline.shard_paths(directory, ctx)[0] for ctx in _contexts(2)]
    assert not set(paths[0]) & set(paths[1])
    assert sorted(paths[0] + paths[1]) == records.list_shards(directory)
    seen = []
    for ctx in _contexts(2):
        ds = pipeline.make_triplet_dataset(directory, _config("noise"), 12,
                                           input_context=ctx, repeat=False)
        rids = set()
        for windows, _ in ds:
            assert windows.shape[0] == 6  # per-replica batch
            rids |= {_info(lookup, w).recording_id for w in windows.numpy()
                     if w.tobytes() in lookup}
        seen.append(rids)
    assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_fewer_shards_than_pipelines_shards_records(tmp_path):
    lookup = write_corpus(str(tmp_path), _recording_specs()[:8], 1)
    ids = []
    for ctx in _contexts(2):
        ds = pipeline.make_window_dataset(str(tmp_path), input_context=ctx)
        ids.append({int(w[samplers.WINDOW_ID]) for w in ds})
    assert ids[0] and ids[1] and not ids[0] & ids[1]
    assert len(ids[0] | ids[1]) == len(lookup)


# ---------------------------------------------------------- corrupt shards
def test_corrupt_shard_raises_or_is_skipped(corpus, tmp_path):
    directory, _ = corpus
    for path in records.list_shards(directory):
        shutil.copy(path, tmp_path)
    victim = records.list_shards(str(tmp_path))[0]
    with open(victim, "r+b") as f:
        f.truncate(os.path.getsize(victim) - 100)
    with pytest.raises(records.CorruptShardError):
        pipeline.make_triplet_dataset(str(tmp_path), _config("noise"), 6)
    ds = pipeline.make_triplet_dataset(str(tmp_path), _config("noise"), 6,
                                       skip_corrupt=True, repeat=False)
    assert len(list(ds)) > 0


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("field,value", [
    ("sampler", "nonsense"),
    ("noise_sigma", -0.1),
    ("noise_sigma", float("nan")),
    ("translation_max_shift", 64),
    ("translation_max_shift", 2.5),
    ("mixing_alpha", float("inf")),
    ("proximity_dt", 0.0),
    ("joint_weights", {"noise": -1.0}),
    ("joint_weights", {"bogus": 1.0}),
    ("joint_weights", {"noise": 0.0, "translation": 0.0, "mixing": 0.0,
                       "proximity": 0.0}),
    ("joint_weights", "noise:1"),
    ("shuffle_buffer", 0),
])
def test_config_rejects_bad_values_naming_the_field(field, value):
    kwargs = {"sampler": "joint", field: value}
    with pytest.raises(ValueError, match="--" + field):
        pipeline.SamplerConfig(**kwargs)


def test_config_round_trips_through_config_json():
    config = pipeline.SamplerConfig(sampler="joint", joint_weights="noise=2,"
                                    "proximity=1", proximity_dt=math.inf)
    assert config.joint_weights == {"noise": 2.0, "translation": 0.0,
                                    "mixing": 0.0, "proximity": 1.0}
    as_json = json.loads(json.dumps(jsonio.to_jsonable(config)))
    assert pipeline.SamplerConfig.from_dict(as_json) == config


def test_sampler_flags_build_the_config():
    flagdefs.define_sampler_flags()
    flagdefs.define_sampler_flags()  # idempotent
    for name in ("sampler", "noise_sigma", "translation_max_shift",
                 "mixing_alpha", "proximity_dt", "joint_weights",
                 "shuffle_buffer", "seed"):
        assert flags.FLAGS[name].help
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    with flagsaver.flagsaver(sampler="translation", translation_max_shift=4,
                             joint_weights="mixing=3", proximity_dt=5.0):
        config = flagdefs.sampler_config_from_flags()
    assert config.sampler == "translation"
    assert config.translation_max_shift == 4
    assert config.proximity_dt == 5.0
    assert config.joint_weights["mixing"] == 3.0
    assert config.joint_weights["noise"] == 0.0
    with flagsaver.flagsaver(sampler=None):
        with pytest.raises(ValueError, match="--sampler"):
            flagdefs.sampler_config_from_flags()


# ----------------------------------------------------------------- inspect
def _png_size(path):
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", head[16:24])


def test_triplet_grid_png(corpus, tmp_path):
    directory, _ = corpus
    ds = pipeline.make_triplet_dataset(directory, _config("translation"), 6,
                                       seed=0)
    path = str(tmp_path / "grid" / "noise.png")
    rows = inspect_triplets.save_triplet_grid(ds, path, num_triplets=4,
                                              sampler="translation")
    assert rows == 4
    width, height = _png_size(path)
    dpi = inspect_triplets.DPI
    assert (width, height) == (3 * inspect_triplets.CELL_INCHES[0] * dpi,
                               4 * inspect_triplets.CELL_INCHES[1] * dpi)
    assert os.path.getsize(path) > 10000  # drawn, not blank
    # Triplet dicts name their own sampler (joint mixes several).
    triplets = pipeline.make_triplets(directory, _config("joint"), seed=0)
    path2 = str(tmp_path / "joint.png")
    assert inspect_triplets.save_triplet_grid(triplets, path2,
                                              num_triplets=3) == 3
    assert _png_size(path2)[1] == 3 * inspect_triplets.CELL_INCHES[1] * dpi
    with pytest.raises(ValueError):
        inspect_triplets.save_triplet_grid(np.zeros((4, 96, 64)), path2)


def test_joint_never_labels_a_negative_from_the_anchors_recording(tmp_path):
    # Few recordings of many windows and a small buffer: a random negative
    # often comes from the anchor's own recording (a third of the time here).
    specs = [("r%d" % r, [12], ()) for r in range(3)]
    write_corpus(str(tmp_path), specs, 3)
    config = _config("joint", shuffle_buffer=8)
    triplets = _triplets(str(tmp_path), config, count=300, seed=2)
    names = {options.SAMPLERS[t[samplers.SAMPLER]] for t in triplets}
    assert names == {"noise", "translation", "mixing", "proximity"}
    for t in triplets:
        rid = t[samplers.RECORDING_IDS]
        assert rid[0] != rid[2], options.SAMPLERS[t[samplers.SAMPLER]]
    # And in the batches the loss sees: the negative never has the anchor's
    # label.
    ds = pipeline.make_triplet_dataset(str(tmp_path), config, 48, seed=3)
    for _, labels in ds.take(10):
        labels = labels.numpy().reshape(-1, 3)
        assert np.all(labels[:, 0] == labels[:, 1])
        assert np.all(labels[:, 0] != labels[:, 2])
    # Without proximity, labels are window ids and such negatives stay.
    no_proximity = _config("joint", shuffle_buffer=8, joint_weights={
        "noise": 1.0, "translation": 1.0, "mixing": 1.0})
    triplets = _triplets(str(tmp_path), no_proximity, count=120, seed=2)
    assert any(t[samplers.RECORDING_IDS][0] == t[samplers.RECORDING_IDS][2]
               for t in triplets)
