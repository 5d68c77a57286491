"""The tf.data service path: served triplet batches, worker streams, binary.

The service tests run an in-process dispatcher and two workers on localhost
for the whole module and stop them at the end. Every window of the test
corpus is random, so its bytes name its recording; a served batch is
attributed to a worker's stream by finding it, byte for byte, in the batches
the same seeded stream yields locally.
"""

import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading

from absl import flags
from absl.testing import flagsaver
import numpy as np
import pytest
import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.sampling import data_service
from triplet_audio.cli import flagdefs
from triplet_audio.sampling import pipeline
from triplet_audio.features import records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = flags.FLAGS

BATCH = 12  # 4 triplets
SEED = 7
NUM_STREAMS = 3
# Served batches read at most while waiting for both workers' streams.
MAX_SERVED = 150


def write_corpus(directory, num_recordings=16, num_shards=4, seed=0):
    """Random-window records; returns {window bytes: recording id}."""
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    writers = [tf.io.TFRecordWriter(os.path.join(
        directory, records.shard_name(i, num_shards)))
        for i in range(num_shards)]
    lookup = {}
    for r in range(num_recordings):
        rid = "rec%02d" % r
        count = 2 + r % 4
        logmel = rng.uniform(-3.0, 3.0, (count,) + C.WINDOW_SHAPE).astype(
            np.float32)
        for window in logmel:
            lookup[window.tobytes()] = rid
        example = records.make_example(
            logmel, np.arange(count) * C.WINDOW_SECONDS, rid)
        writers[r % num_shards].write(example.SerializeToString())
    for w in writers:
        w.close()
    return lookup


@pytest.fixture(scope="module", name="corpus")
def fixture_corpus(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("service_corpus"))
    return directory, write_corpus(directory)


def _make_dataset_fn(directory):
    # Proximity: all three windows of a triplet are corpus windows, so the
    # test can name the recording of each.
    config = pipeline.SamplerConfig(sampler="proximity", shuffle_buffer=16)
    calls = []

    def make_dataset(seed):
        calls.append(seed)
        return pipeline.make_triplet_dataset(directory, config, BATCH,
                                             seed=seed)
    make_dataset.calls = calls
    return make_dataset


def _key(batch):
    windows, labels = batch
    return np.asarray(windows).tobytes() + np.asarray(labels).tobytes()


def _numpy(ds, count):
    return [(w.numpy(), l.numpy()) for w, l in ds.take(count)]


@pytest.fixture(scope="module", name="service")
def fixture_service():
    """grpc:// address of a dispatcher with two registered workers."""
    dispatcher = data_service.start_dispatcher()
    address = "localhost:%d" % data_service.server_port(dispatcher)
    workers = [data_service.start_worker(address, worker_host="localhost")
               for _ in range(2)]
    yield "grpc://" + address
    for server in workers + [dispatcher]:
        server.stop()
        server.join()


@pytest.fixture(scope="module", name="served")
def fixture_served(corpus, service):
    """Served batches, read until both workers' streams have shown up.

    Returns:
      (served batches, {stream index: that stream's first MAX_SERVED
      batches computed locally}).
    """
    directory, _ = corpus
    make_dataset = _make_dataset_fn(directory)
    local = {i: _numpy(make_dataset(data_service.stream_seed(SEED, i)),
                       MAX_SERVED) for i in range(NUM_STREAMS)}
    owner = {_key(b): i for i, batches in local.items() for b in batches}
    ds = data_service.maybe_distribute(make_dataset, service, seed=SEED,
                                       num_streams=NUM_STREAMS)
    served, seen = [], {}
    for w, l in ds.take(MAX_SERVED):
        batch = (w.numpy(), l.numpy())
        served.append(batch)
        stream = owner.get(_key(batch))
        seen[stream] = seen.get(stream, 0) + 1
        # Enough to show two streams; reading on only costs time.
        if len([s for s, n in seen.items() if s is not None and n >= 5]) >= 2:
            break
    return served, local


# ---------------------------------------------------------------- addresses
@pytest.mark.parametrize("address", [
    "grpc://localhost:5050", "grpc://dispatcher-0.cluster.local:1",
    "grpc://10.0.0.7:65535", "grpc://[::1]:5050", " grpc://host:5050 "])
def test_parse_service_address_accepts(address):
    assert data_service.parse_service_address(address) == address.strip()


@pytest.mark.parametrize("address", [
    "localhost:5050", "http://localhost:5050", "grpc://localhost",
    "grpc://localhost:0", "grpc://localhost:70000", "grpc://:5050",
    "grpc://host:50x0", "grpc://host:5050/path", "", None])
def test_parse_service_address_rejects_naming_the_flag(address):
    with pytest.raises(ValueError, match="--tf_data_service"):
        data_service.parse_service_address(address)


def test_maybe_distribute_rejects_bad_address_before_building(corpus):
    make_dataset = _make_dataset_fn(corpus[0])
    with pytest.raises(ValueError, match="--tf_data_service"):
        data_service.maybe_distribute(make_dataset, "dispatcher:5050")
    assert make_dataset.calls == []


def test_server_arguments_are_validated():
    with pytest.raises(ValueError, match="--dispatcher"):
        data_service.start_worker("no-port-here")
    with pytest.raises(ValueError, match="--work_dir"):
        data_service.start_dispatcher(fault_tolerant=True)
    with pytest.raises(ValueError, match="--port"):
        data_service.start_dispatcher(port=70000)
    with pytest.raises(ValueError, match="--role"):
        data_service.serve("trainer", wait=lambda: None)
    with pytest.raises(ValueError, match="--dispatcher"):
        data_service.serve("worker", wait=lambda: None)


# ------------------------------------------------------------------ streams
def test_stream_seeds():
    seeds = [data_service.stream_seed(SEED, i) for i in range(64)]
    assert seeds[0] == SEED
    assert len(set(seeds)) == 64
    assert seeds == [data_service.stream_seed(SEED, i) for i in range(64)]
    assert data_service.stream_seed(SEED + 1, 1) != seeds[1]
    assert all(0 <= s < 2 ** 63 for s in seeds)


def test_without_service_the_input_is_the_local_pipeline(corpus):
    directory, _ = corpus
    make_dataset = _make_dataset_fn(directory)
    got = _numpy(data_service.maybe_distribute(make_dataset, None, seed=SEED),
                 3)
    assert make_dataset.calls == [SEED]
    want = _numpy(make_dataset(SEED), 3)
    assert [_key(b) for b in got] == [_key(b) for b in want]


def test_independent_streams_locally_is_stream_zero(corpus):
    directory, _ = corpus
    make_dataset = _make_dataset_fn(directory)
    ds = data_service.independent_streams(make_dataset, SEED, NUM_STREAMS)
    assert make_dataset.calls == [data_service.stream_seed(SEED, i)
                                  for i in range(NUM_STREAMS)]
    assert ds.element_spec == make_dataset(SEED).element_spec
    got = _numpy(ds, 3)
    want = _numpy(make_dataset(SEED), 3)
    assert [_key(b) for b in got] == [_key(b) for b in want]
    with pytest.raises(ValueError, match="--tf_data_service_streams"):
        data_service.independent_streams(make_dataset, SEED, 0)


# ------------------------------------------------------------ served batches
def test_served_batches_have_the_triplet_layout(corpus, served):
    _, lookup = corpus
    batches, _ = served
    assert batches
    for windows, labels in batches:
        assert windows.shape == (BATCH, 96, 64)
        assert windows.dtype == np.float32
        assert labels.shape == (BATCH,)
        assert labels.dtype == np.int64
        # Windows [3i, 3i + 1, 3i + 2] are anchor, positive, negative.
        np.testing.assert_array_equal(labels[0::3], labels[1::3])
        assert np.all(labels[0::3] != labels[2::3])
        rec = [lookup[w.tobytes()] for w in windows]  # from the corpus
        for i in range(0, BATCH, 3):
            assert rec[i] == rec[i + 1] != rec[i + 2]
            assert windows[i].tobytes() != windows[i + 1].tobytes()


def test_two_workers_serve_distinct_seeded_streams(served):
    batches, local = served
    keys = [_key(b) for b in batches]
    assert len(set(keys)) == len(keys), "%d batches were served twice" % (
        len(keys) - len(set(keys)))
    position = {_key(b): (i, n) for i, stream in local.items()
                for n, b in enumerate(stream)}
    unknown = sum(key not in position for key in keys)
    assert unknown == 0, "%d of %d served batches are from no stream" % (
        unknown, len(keys))
    by_stream = {}
    for key in keys:
        stream, n = position[key]
        by_stream.setdefault(stream, []).append(n)
    # Each worker holds one stream index for the life of the job, so two
    # streams mean both workers produced batches.
    assert len(by_stream) == 2, by_stream.keys()
    # Each stream arrives whole and in order: the seeded local pipeline.
    for positions in by_stream.values():
        assert positions == list(range(len(positions)))


# -------------------------------------------------------------------- flags
def test_tf_data_service_flags():
    flagdefs.define_tf_data_service_flag()
    with flagsaver.flagsaver():
        FLAGS(["bin/train", "--tf_data_service=grpc://dispatcher:5050",
               "--tf_data_service_streams=3"])
        assert flagdefs.tf_data_service_args_from_flags() == {
            "tf_data_service": "grpc://dispatcher:5050",
            "tf_data_service_streams": 3}
        FLAGS(["bin/train", "--tf_data_service=dispatcher:5050"])
        with pytest.raises(ValueError, match="--tf_data_service"):
            flagdefs.tf_data_service_args_from_flags()
    with flagsaver.flagsaver():
        FLAGS(["bin/train"])
        assert flagdefs.tf_data_service_args_from_flags() == {
            "tf_data_service": None,
            "tf_data_service_streams": data_service.DEFAULT_NUM_STREAMS}


def test_data_service_flags():
    flagdefs.define_data_service_flags()
    with flagsaver.flagsaver():
        FLAGS(["bin/data_service", "--role=worker", "--dispatcher=d:5050",
               "--port=5051"])
        args = flagdefs.data_service_args_from_flags()
        assert args["role"] == "worker"
        assert args["dispatcher_address"] == "d:5050"
        assert args["port"] == 5051
        assert args["worker_host"] == socket.gethostname()
    for argv, flag in [([], "--role"), (["--role=worker"], "--dispatcher"),
                       (["--role=dispatcher", "--dispatcher=d:1"],
                        "--dispatcher"),
                       (["--role=dispatcher", "--fault_tolerant"],
                        "--work_dir")]:
        with flagsaver.flagsaver():
            FLAGS(["bin/data_service"] + argv)
            with pytest.raises(ValueError, match=flag):
                flagdefs.data_service_args_from_flags()


# ------------------------------------------------------------------- binary
def _run_binary(*args, **kwargs):
    return subprocess.run(
        [sys.executable, os.path.join(REPO, "bin", "data_service")] +
        list(args), cwd=REPO, capture_output=True, text=True, check=False,
        **kwargs)


def test_binary_rejects_bad_flags_in_one_line():
    proc = _run_binary("--role=worker", timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--dispatcher" in lines[0], proc.stderr


def test_binary_serves_until_sigterm():
    proc = subprocess.Popen(
        [sys.executable, os.path.join(REPO, "bin", "data_service"),
         "--role=both", "--worker_host=localhost"],
        cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    lines = queue.Queue()

    def pump():
        for line in proc.stderr:
            lines.put(line)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    try:
        port = None
        log = []
        while port is None:
            # A guard against a hung start-up, not a timing assertion.
            line = lines.get(timeout=120)
            assert line is not None, "".join(log)
            log.append(line)
            match = re.search(r"--tf_data_service=grpc://\S+:(\d+)", line)
            if match:
                port = int(match.group(1))
        ds = data_service.distribute(
            tf.data.Dataset.range(10), "grpc://localhost:%d" % port,
            processing_mode="parallel_epochs")
        assert sorted(int(x) for x in ds) == list(range(10))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        rest = []
        while (line := lines.get(timeout=60)) is not None:
            rest.append(line)
        assert any("stopping" in line for line in rest), "".join(rest)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_training_reads_its_batches_from_the_service(corpus, service,
                                                     tmp_path):
    """train() with --tf_data_service: steps run on batches the workers made."""
    from triplet_audio.training import trainer  # pylint: disable=g-import-not-at-top
    directory, _ = corpus
    config = trainer.TrainConfig(
        train_data=directory, model_dir=str(tmp_path / "run"),
        sampler=pipeline.SamplerConfig(sampler="noise", shuffle_buffer=64),
        model="small", embedding_size=8, batch_size=12, steps=3,
        checkpoint_every=3, log_every=1, tf_data_service=service,
        tf_data_service_streams=2)
    summary = trainer.train(config)
    assert summary["step"] == 3 and not summary["interrupted"]
    assert np.isfinite(summary["metrics"]["loss"])
    saved = trainer.load_config(str(tmp_path / "run"))
    assert saved.tf_data_service == service
    with pytest.raises(ValueError, match="tf_data_service"):
        trainer.TrainConfig(
            train_data=directory, model_dir=str(tmp_path / "bad"),
            sampler=pipeline.SamplerConfig(sampler="noise"),
            tf_data_service="localhost:5050").validate()
