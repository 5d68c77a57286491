"""Distributed training: global mining, mirrored replicas, multi-worker resume.

Multi-replica runs need several devices, which a CPU-only machine has only
as logical devices, and those must be configured before TensorFlow
initialises (which the rest of the session has done). So every test here
runs a subprocess: a script with two logical CPU devices, `bin/train
--strategy=mirrored --cpu_replicas=2`, or two `bin/train
--strategy=multi_worker` workers on localhost ports under TF_CONFIG.

The multi-worker test goes through a whole preemption story: SIGTERM to one
worker (the PreemptionCheckpointHandler stops both at one checkpointed
step), restart, SIGKILL of the chief (the survivor's next collective fails;
the job restarts from the last periodic checkpoint), restart to the end.
"""

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf

from triplet_audio.model import losses
from triplet_audio.training import run_dir
from triplet_audio.training import trainer

import test_training  # pylint: disable=g-bad-import-order
from test_training import BATCH
from test_training import checkpoint_step
from test_training import make_config
from test_training import read_summary

REPO_ROOT = test_training.REPO_ROOT
BIN_TRAIN = test_training.BIN_TRAIN
# Generous bounds: only a hang should reach them (a worker starts in ~10 s
# and runs a few steps/s on two loaded cores).
STEP_TIMEOUT_S = 240
# A worker whose peer was SIGKILLed fails its next collective (on localhost
# within ~5-15 s: the peer's connection is reset).
SURVIVOR_TIMEOUT_S = 120


@pytest.fixture(scope="module", name="corpus")
def fixture_corpus(tmp_path_factory):
    return test_training.write_corpus(str(tmp_path_factory.mktemp("corpus")))


def _env(**extra):
    env = dict(os.environ)
    env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=REPO_ROOT)
    env.pop("TF_CONFIG", None)
    env.update(extra)
    return env


def _train_command(corpus, model_dir, steps, *extra):
    return [sys.executable, BIN_TRAIN, "--flagfile=flags/demo.cfg",
            "--sampler=proximity", "--train_data=" + corpus,
            "--model_dir=" + model_dir, "--batch_size=%d" % BATCH,
            "--warmup_steps=0", "--shuffle_buffer=64", "--steps=%d" % steps,
            "--log_every=1"] + list(extra)


def _read(path):
    with open(path) as f:
        return f.read()


# ------------------------------------------------------------------ config
@pytest.mark.parametrize("field,overrides", [
    ("mining", {"mining": "everywhere"}),
    ("cpu_replicas", {"cpu_replicas": -1}),
    ("cpu_replicas", {"cpu_replicas": 2}),  # Needs --strategy=mirrored.
    ("cpu_replicas", {"cpu_replicas": 2, "strategy": "multi_worker"}),
    # 24 windows over 3 replicas: 8 each, not whole triplets.
    ("batch_size", {"cpu_replicas": 3, "strategy": "mirrored"}),
])
def test_validate_names_the_invalid_field(field, overrides):
    config = dataclasses.replace(
        make_config("/data/corpus", "/tmp/unused"), **overrides)
    with pytest.raises(ValueError, match="--%s" % field):
        config.validate()


def test_distributed_fields_round_trip(tmp_path):
    config = make_config("/data/corpus", str(tmp_path), strategy="mirrored",
                         mining="global", cpu_replicas=2)
    run_dir.write_config(str(tmp_path), config)
    assert trainer.load_config(str(tmp_path)) == config
    assert make_config("/c", "/m").mining == "local"


# --------------------------------------------- global mining == one device
def test_cross_replica_loss_on_one_replica_is_the_plain_loss():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, size=12)
    x = rng.standard_normal((12, 5)).astype(np.float32)
    loss, metrics = losses.cross_replica_semi_hard_triplet_loss(
        labels, x, margin=0.5, return_metrics=True)
    expected, expected_metrics = losses.semi_hard_triplet_loss(
        labels, x, margin=0.5, return_metrics=True)
    assert float(loss) == float(expected) > 0
    assert {k: float(v) for k, v in metrics.items()} == {
        k: float(v) for k, v in expected_metrics.items()}
    # In cross-replica context there is no replica to gather for.
    with tf.distribute.MirroredStrategy(["/cpu:0"]).scope():
        with pytest.raises(ValueError, match="replica context"):
            losses.cross_replica_semi_hard_triplet_loss(labels, x)


_MINING_SCRIPT = textwrap.dedent("""
    import dataclasses
    import json
    import numpy as np
    import tensorflow as tf
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    import keras
    from triplet_audio import constants as C
    from triplet_audio.model import losses
    from triplet_audio.model import models
    from triplet_audio.sampling import pipeline
    from triplet_audio.training import train_step
    from triplet_audio.training import trainer

    B, D = 24, 8
    mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    one_device = tf.distribute.get_strategy()

    def build(strategy, config):
        # No BatchNormalization: its statistics are per replica, which would
        # make the embeddings (not the mining) differ from one device's.
        with strategy.scope():
            model = keras.Sequential([
                keras.Input(C.WINDOW_SHAPE), keras.layers.Flatten(),
                keras.layers.Dense(D, kernel_initializer=
                                   keras.initializers.GlorotNormal(seed=1)),
                models.L2Normalize()])
            optimizer, _ = trainer.make_optimizer(config)
            optimizer.build(model.trainable_variables)
        return model, optimizer

    def gradient(strategy, config, windows, labels):
        # SGD's first step moves the weights by -learning_rate x gradient
        # (momentum starts at 0), so the update of the real train step gives
        # the gradient the optimizer received, after the replicas' sum.
        model, optimizer = build(strategy, config)
        before = [w.numpy() for w in model.trainable_variables]
        step = train_step.make_train_step(config, strategy, model, optimizer)
        data = tf.data.Dataset.from_tensor_slices((windows, labels)).batch(B)
        if strategy is not one_device:
            # Splits the batch in contiguous halves: replica 0 the first.
            data = strategy.experimental_distribute_dataset(data)
        out = step(next(iter(data)))
        grads = [(b - w.numpy()) / config.learning_rate
                 for b, w in zip(before, model.trainable_variables)]
        return float(out["loss"]), np.concatenate([g.ravel() for g in grads])

    results = {}
    rng = np.random.default_rng(0)
    for case, distance in (("ids", "squared"), ("multihot", "euclidean")):
        windows = rng.standard_normal((B,) + C.WINDOW_SHAPE).astype("float32")
        if case == "ids":
            # Five classes over 24 windows: every replica's half holds
            # classes whose other members (positives) and closest
            # negatives are partly in the other half.
            labels = rng.integers(0, 5, size=B).astype("int64")
        else:
            labels = (rng.random((B, 4)) < 0.35).astype("float32")
        config = trainer.TrainConfig(
            train_data="unused", model_dir="unused",
            sampler=pipeline.SamplerConfig(sampler="noise"),
            batch_size=B, margin=0.5, distance=distance, optimizer="sgd",
            learning_rate=1.0, lr_schedule="constant")
        single = gradient(one_device, config, windows, labels)
        glob = gradient(mirrored, dataclasses.replace(config, mining="global"),
                        windows, labels)
        local = gradient(mirrored, config, windows, labels)
        embeddings = build(one_device, config)[0](windows)
        halves = [float(losses.semi_hard_triplet_loss(
            labels[h], embeddings[h], margin=0.5, distance=distance))
            for h in (slice(0, B // 2), slice(B // 2, B))]
        results[case] = {
            "single": [single[0], single[1].tolist()],
            "global": [glob[0], glob[1].tolist()],
            "local": [local[0], local[1].tolist()],
            "halves": halves}
    print(json.dumps(results))
""")


def test_global_mining_matches_one_device_on_the_concatenated_batch(
        tmp_path):
    result = subprocess.run([sys.executable, "-c", _MINING_SCRIPT],
                            env=_env(), capture_output=True, text=True,
                            timeout=STEP_TIMEOUT_S, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    for case, values in results.items():
        single_loss, single_grad = values["single"]
        global_loss, global_grad = values["global"]
        local_loss, local_grad = values["local"]
        single_grad = np.array(single_grad)
        assert single_loss > 0.05, case
        assert np.abs(single_grad).max() > 1e-3, case  # Not vacuous.
        # Two replicas mining in the all-gathered batch: the loss and the
        # (summed) gradient of one device holding the whole batch.
        assert global_loss == pytest.approx(single_loss, abs=1e-5), case
        np.testing.assert_allclose(global_grad, single_grad, atol=1e-5,
                                   err_msg=case)
        # Local mining: each replica mines in its half (the reported loss
        # is the halves' mean), finding other negatives and missing the
        # positives in the other half: another loss, another gradient.
        assert local_loss == pytest.approx(np.mean(values["halves"]),
                                           abs=1e-5), case
        assert abs(local_loss - single_loss) > 1e-3, (case, local_loss,
                                                      single_loss)
        assert np.abs(np.array(local_grad) - single_grad).max() > 1e-3, case


# ------------------------------------------- bin/train on 2 CPU replicas
def test_bin_train_mirrored_on_two_cpu_replicas_trains_and_resumes(
        corpus, tmp_path):
    model_dir = str(tmp_path / "run")
    flags = ("--strategy=mirrored", "--cpu_replicas=2", "--mining=global",
             "--checkpoint_every=2")
    first = subprocess.run(_train_command(corpus, model_dir, 4, *flags),
                           cwd=REPO_ROOT, env=_env(), capture_output=True,
                           text=True, timeout=STEP_TIMEOUT_S)
    log = first.stdout + first.stderr
    assert first.returncode == 0, log[-3000:]
    assert "2 replica(s), %d windows each, global mining" % (BATCH // 2) in log
    summary = read_summary(model_dir)
    assert summary["step"] == 4 and not summary["interrupted"]
    assert summary["metrics"]["loss"] > 0
    assert checkpoint_step(model_dir) == 4
    assert trainer.load_config(model_dir).mining == "global"

    second = subprocess.run(_train_command(corpus, model_dir, 6, *flags),
                            cwd=REPO_ROOT, env=_env(), capture_output=True,
                            text=True, timeout=STEP_TIMEOUT_S)
    log = second.stdout + second.stderr
    assert second.returncode == 0, log[-3000:]
    assert "at step 4" in log and "trained steps 4..6" in log, log[-3000:]
    assert checkpoint_step(model_dir) == 6

    # Checkpoints do not depend on the strategy: resume on one device.
    config = dataclasses.replace(trainer.load_config(model_dir),
                                 strategy="default", cpu_replicas=0, steps=7)
    summary = trainer.train(config)
    assert summary["step"] == 7 and checkpoint_step(model_dir) == 7


def test_bin_train_rejects_a_batch_that_splits_triplets(corpus, tmp_path):
    # 24 windows over 5 replicas: not whole triplets per replica.
    result = subprocess.run(
        _train_command(corpus, str(tmp_path / "run"), 2,
                       "--strategy=mirrored", "--cpu_replicas=5"),
        cwd=REPO_ROOT, env=_env(), capture_output=True, text=True,
        timeout=STEP_TIMEOUT_S)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: --batch_size") and "5 replicas" in last


# ------------------------------------------------------ multi-worker
def _free_ports(n):
    sockets = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("localhost", 0))
        sockets.append(s)
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


class _Workers:
    """Two bin/train --strategy=multi_worker processes on localhost."""

    def __init__(self, command, log_prefix):
        ports = _free_ports(2)
        cluster = {"worker": ["localhost:%d" % p for p in ports]}
        self.logs = ["%s_worker%d.log" % (log_prefix, i) for i in range(2)]
        self.processes = []
        for i, log_path in enumerate(self.logs):
            tf_config = json.dumps({"cluster": cluster,
                                    "task": {"type": "worker", "index": i}})
            with open(log_path, "w") as log:
                # The log goes to a file: a full pipe would stall the child.
                self.processes.append(subprocess.Popen(
                    command + ["--strategy=multi_worker"], cwd=REPO_ROOT,
                    env=_env(TF_CONFIG=tf_config), stdout=log,
                    stderr=subprocess.STDOUT))

    def log(self, i):
        return _read(self.logs[i])

    def wait_for_checkpoint(self, model_dir, step):
        """Polls until a checkpoint >= `step`; fails if a worker exits."""
        deadline = time.monotonic() + STEP_TIMEOUT_S
        while (checkpoint_step(model_dir) or 0) < step:
            for i, p in enumerate(self.processes):
                if p.poll() is not None:
                    pytest.fail("worker %d exited (%d) before checkpoint %d:"
                                "\n%s" % (i, p.returncode, step,
                                          self.log(i)[-3000:]))
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint %d within %d s" %
                            (step, STEP_TIMEOUT_S))
            time.sleep(0.05)
        return checkpoint_step(model_dir)

    def wait(self, timeout=STEP_TIMEOUT_S):
        return [p.wait(timeout=timeout) for p in self.processes]

    def kill_all(self):
        for p in self.processes:
            if p.poll() is None:
                p.kill()
                p.wait()


def _no_worker_scratch(model_dir):
    return not [n for n in os.listdir(model_dir) if n.startswith("worker_")]


def test_multi_worker_preemption_and_worker_loss_resume(corpus, tmp_path):
    model_dir = str(tmp_path / "run")
    steps = 40
    command = _train_command(corpus, model_dir, steps, "--checkpoint_every=5",
                             "--mining=global")
    prefix = str(tmp_path / "run")

    # 1. SIGTERM to the non-chief: the handler relays it, both workers
    #    checkpoint the same step and exit 3 (interrupted).
    workers = _Workers(command, prefix + "1")
    try:
        workers.wait_for_checkpoint(model_dir, 5)
        workers.processes[1].send_signal(signal.SIGTERM)
        codes = workers.wait()
    finally:
        workers.kill_all()
    assert codes == [3, 3], workers.log(0)[-3000:] + workers.log(1)[-3000:]
    saved = checkpoint_step(model_dir)
    assert 5 <= saved < steps
    summary = read_summary(model_dir)
    assert summary["interrupted"] and summary["step"] == saved
    assert "signal 15 on this worker" in workers.log(1)
    assert "a signal on another worker" in workers.log(0)
    for i in range(2):
        assert "checkpointed at step %d" % saved in workers.log(i)
    assert _no_worker_scratch(model_dir)

    # 2. Restart: both resume at that step. Then SIGKILL the chief after
    #    the next periodic checkpoint: nothing can be saved, the survivor's
    #    next collective fails and it exits non-zero by itself.
    workers = _Workers(command, prefix + "2")
    try:
        later = workers.wait_for_checkpoint(model_dir, saved + 1)
        assert workers.processes[0].poll() is None, "finished too early"
        workers.processes[0].send_signal(signal.SIGKILL)
        survivor = workers.processes[1].wait(timeout=SURVIVOR_TIMEOUT_S)
    finally:
        workers.kill_all()
    for i in range(2):
        assert "resumed from" in workers.log(i), workers.log(i)[-3000:]
        assert "at step %d" % saved in workers.log(i)
    assert survivor not in (0, 3), workers.log(1)[-3000:]
    assert "lost another worker" in workers.log(1), workers.log(1)[-3000:]
    killed_at = checkpoint_step(model_dir)
    assert later <= killed_at < steps

    # 3. Restart: resume from the last periodic checkpoint, finish.
    workers = _Workers(command, prefix + "3")
    try:
        codes = workers.wait()
    finally:
        workers.kill_all()
    assert codes == [0, 0], workers.log(0)[-3000:] + workers.log(1)[-3000:]
    for i in range(2):
        assert "at step %d" % killed_at in workers.log(i)
        assert "trained steps %d..%d" % (killed_at, steps) in workers.log(i)
    summary = read_summary(model_dir)
    assert summary["step"] == steps and not summary["interrupted"]
    assert checkpoint_step(model_dir) == steps
    assert _no_worker_scratch(model_dir)
