"""Training: config, each sampler end to end, checkpoints, resume, NaN, restore.

The corpus is written directly with `records.make_example`: every recording
has its own spectral profile and every window its own profile on top of it
(plus cell noise), so each sampler's task is learnable in a few dozen steps
of the small model. Runs use the "small" model and batches of 24 windows so
the whole file stays within a couple of minutes on two CPU cores.

The interruption tests run `bin/train` as a subprocess (signals, exit status
and resume are properties of the binary); the rest call `trainer.train`.
"""

import dataclasses
import glob
import hashlib
import json
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from triplet_audio.config import jsonio
from triplet_audio import constants as C
from triplet_audio.model import losses
from triplet_audio.model import models
from triplet_audio.sampling import pipeline
from triplet_audio.features import records
from triplet_audio.training import loop
from triplet_audio.training import run_dir
from triplet_audio.training import train_step
from triplet_audio.training import trainer

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN_TRAIN = os.path.join(REPO_ROOT, "bin", "train")

NUM_RECORDINGS = 12
WINDOWS_PER_RECORDING = 4
NUM_CLASSES = 4
BATCH = 24
SAMPLERS = ("noise", "translation", "mixing", "proximity", "supervised",
            "joint")
# Mean loss of the last 10 of 30 steps over that of the first 5 must be below
# this (0.5 by default; each single sampler reaches 0.01-0.1 here). Joint
# plateaus near 0.3-0.55 on this corpus: its proximity triplets pull windows of
# a recording together while its noise, translation and mixing triplets
# (labelled by window id) push the same windows apart whenever a batch holds
# both kinds.
MAX_LOSS_RATIO = {"joint": 0.7}
# Generous bound on one bin/train subprocess (~10 s unloaded); only a hang
# should reach it.
SUBPROCESS_TIMEOUT_S = 300


def write_corpus(directory, seed=0, classes=True):
    """Writes a tiny labelled corpus of structured random log-mel windows.

    Args:
      directory: corpus directory to create.
      seed: NumPy seed of the windows.
      classes: write a manifest with a class vocabulary (recording r has class
        r % NUM_CLASSES); False writes a manifest without "classes".

    Returns:
      directory.
    """
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    num_shards = 2
    writers = [tf.io.TFRecordWriter(os.path.join(
        directory, records.shard_name(i, num_shards)))
        for i in range(num_shards)]
    for r in range(NUM_RECORDINGS):
        # A recording-level and a window-level spectral profile: proximity and
        # supervised can learn the first, the augmentation samplers (whose
        # labels are window ids) the second. Centred near the log-mel of real
        # audio (about -2).
        recording = rng.normal(0.0, 1.0, (1, 1, C.NUM_MEL_BANDS))
        window = rng.normal(0.0, 1.0,
                            (WINDOWS_PER_RECORDING, 1, C.NUM_MEL_BANDS))
        logmel = recording + window - 2.0 + rng.normal(
            0.0, 0.3, (WINDOWS_PER_RECORDING,) + C.WINDOW_SHAPE)
        times = np.arange(WINDOWS_PER_RECORDING) * C.WINDOW_SECONDS
        example = records.make_example(
            logmel.astype(np.float32), times, "rec%02d" % r,
            labels=[r % NUM_CLASSES] if classes else [])
        writers[r % num_shards].write(example.SerializeToString())
    for w in writers:
        w.close()
    manifest = {"classes": ["class%d" % c for c in range(NUM_CLASSES)]
                if classes else []}
    with open(os.path.join(directory, records.MANIFEST_NAME), "w") as f:
        json.dump(manifest, f)
    return directory


@pytest.fixture(scope="module", name="corpus")
def fixture_corpus(tmp_path_factory):
    return write_corpus(str(tmp_path_factory.mktemp("corpus")))


def make_config(corpus, model_dir, sampler="proximity", **kwargs):
    """A TrainConfig sized for tests (small model, 8 triplets per batch)."""
    defaults = dict(model="small", batch_size=BATCH, steps=4,
                    checkpoint_every=1000, log_every=1000,
                    learning_rate=1e-3, lr_schedule="constant")
    defaults.update(kwargs)
    return trainer.TrainConfig(
        train_data=corpus, model_dir=str(model_dir),
        sampler=pipeline.SamplerConfig(sampler=sampler, shuffle_buffer=64),
        **defaults)


def summary_losses(model_dir):
    """Per-step training losses from the run's TensorBoard summaries."""
    by_step = {}
    pattern = os.path.join(model_dir, run_dir.SUMMARY_SUBDIR, "events.*")
    for path in sorted(glob.glob(pattern)):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "loss":
                    by_step[event.step] = float(
                        tf.make_ndarray(value.tensor))
    return [by_step[s] for s in sorted(by_step)]


def checkpoint_step(model_dir):
    """Step of the latest checkpoint in a run directory (None if none)."""
    latest = tf.train.latest_checkpoint(
        os.path.join(model_dir, run_dir.CHECKPOINT_SUBDIR))
    return None if latest is None else int(latest.rsplit("-", 1)[1])


def file_digests(directory):
    """{file name: sha256} of every file in a directory."""
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = hashlib.sha256(f.read()).hexdigest()
    return out


def read_summary(model_dir):
    with open(os.path.join(model_dir, run_dir.SUMMARY_NAME)) as f:
        return json.load(f)


# ------------------------------------------------------------------ config
def test_config_round_trips_through_config_json(tmp_path):
    config = trainer.TrainConfig(
        train_data="/data/corpus", model_dir=str(tmp_path),
        sampler=pipeline.SamplerConfig(
            sampler="joint", proximity_dt=math.inf,
            joint_weights={"noise": 1.0, "translation": 0.0, "mixing": 2.5,
                           "proximity": 0.5}),
        model="resnet18", embedding_size=64, batch_size=96, margin=0.3,
        distance="euclidean", optimizer="adamw", weight_decay=1e-4,
        warmup_steps=10, steps=50, mixed_precision="bf16", jit_compile=True,
        seed=7, num_classes=5)
    jsonio.write_config(str(tmp_path), config)
    loaded = trainer.load_config(str(tmp_path))
    assert loaded == config
    assert loaded.sampler.proximity_dt == math.inf
    assert loaded.tpu is None


@pytest.mark.parametrize("field,overrides", [
    ("batch_size", {"batch_size": 50}),
    ("batch_size", {"batch_size": 0}),
    ("tpu", {"strategy": "tpu"}),
    ("strategy", {"strategy": "horovod"}),
    ("model", {"model": "vgg"}),
    ("embedding_size", {"embedding_size": 0}),
    ("margin", {"margin": -0.1}),
    ("distance", {"distance": "cosine"}),
    ("optimizer", {"optimizer": "lamb"}),
    ("learning_rate", {"learning_rate": 0.0}),
    ("lr_schedule", {"lr_schedule": "step"}),
    ("steps", {"steps": 0}),
    ("warmup_steps", {"warmup_steps": 4}),
    ("checkpoint_every", {"checkpoint_every": 0}),
    ("mixed_precision", {"mixed_precision": "fp8"}),
    ("train_data", {"train_data": ""}),
    ("model_dir", {"model_dir": ""}),
])
def test_validate_names_the_invalid_field(field, overrides):
    config = make_config("/data/corpus", "/tmp/unused")
    config = dataclasses.replace(config, **overrides)
    with pytest.raises(ValueError, match="--%s" % field):
        config.validate()


def test_valid_config_validates():
    config = make_config("/data/corpus", "/tmp/unused")
    assert config.validate() is config


# ------------------------------------------------------- every sampler
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_each_sampler_lowers_the_loss(corpus, tmp_path, sampler):
    steps = 30
    config = make_config(corpus, tmp_path / "run", sampler, steps=steps,
                         log_every=1)
    summary = trainer.train(config)
    assert summary["step"] == steps and not summary["interrupted"]
    assert checkpoint_step(config.model_dir) == steps
    per_step = summary_losses(config.model_dir)
    assert len(per_step) == steps
    assert all(math.isfinite(l) for l in per_step)
    # The initial model already separates some triplets (a loss below the
    # margin), but far from all; a model that learns nothing keeps the loss
    # where it started. Semi-hard mining makes single steps noisy, so compare
    # means.
    assert per_step[0] > 0.05, per_step
    first, last = np.mean(per_step[:5]), np.mean(per_step[-10:])
    assert last < MAX_LOSS_RATIO.get(sampler, 0.5) * first, per_step


# --------------------------------------------------- a trained run to reuse
@pytest.fixture(scope="module", name="trained")
def fixture_trained(corpus, tmp_path_factory):
    """A 4-step proximity run and the in-memory model `train` built."""
    build_model = models.build_model
    built = []

    def build_and_keep(*args, **kwargs):
        model = build_model(*args, **kwargs)
        built.append(model)
        return model

    model_dir = str(tmp_path_factory.mktemp("trained"))
    config = make_config(corpus, model_dir, "proximity", steps=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(models, "build_model", build_and_keep)
        trainer.train(config)
    assert len(built) == 1
    return config, built[0]


def test_restore_model_returns_the_checkpoint_weights(trained):
    config, model = trained
    restored, restored_config, step = trainer.restore_model(config.model_dir)
    assert step == config.steps
    assert restored_config == config
    windows = tf.random.stateless_normal((6,) + C.WINDOW_SHAPE, seed=(1, 2),
                                         mean=-2.0)
    expected = model(windows, training=False).numpy()
    np.testing.assert_allclose(restored(windows, training=False).numpy(),
                               expected, rtol=1e-5, atol=1e-6)
    # The trained weights, not a fresh initialisation with the run's seed.
    fresh = models.build_model(config.model, config.embedding_size,
                               seed=config.seed)
    assert not np.allclose(fresh(windows, training=False).numpy(), expected,
                           atol=1e-3)


def test_rerun_of_a_finished_run_does_nothing(trained):
    config, _ = trained
    ckpt_dir = os.path.join(config.model_dir, run_dir.CHECKPOINT_SUBDIR)
    digests = file_digests(ckpt_dir)
    before = read_summary(config.model_dir)
    assert before["metrics"]["loss"] >= 0
    summary = trainer.train(dataclasses.replace(config))
    assert summary == before
    assert read_summary(config.model_dir) == before
    assert file_digests(ckpt_dir) == digests


@pytest.mark.parametrize("field,value", [("model", "resnet50"),
                                         ("embedding_size", 64),
                                         ("mixed_precision", "bf16")])
def test_resume_with_an_incompatible_config_names_the_flag(trained, field,
                                                           value):
    config, _ = trained
    path = os.path.join(config.model_dir, jsonio.CONFIG_NAME)
    with open(path) as f:
        before = f.read()
    other = dataclasses.replace(config, **{field: value})
    with pytest.raises(ValueError, match="--%s=%s" % (field, value)):
        trainer.train(other)
    with open(path) as f:
        assert f.read() == before


# ------------------------------------------------------ supervised input
@pytest.mark.parametrize("manifest", ["no classes", "no manifest"])
def test_supervised_without_classes_is_a_clear_error(tmp_path, manifest):
    corpus = write_corpus(str(tmp_path / "corpus"), classes=False)
    if manifest == "no manifest":
        os.remove(os.path.join(corpus, records.MANIFEST_NAME))
    config = make_config(corpus, tmp_path / "run", "supervised")
    with pytest.raises(ValueError, match="supervised.*class"):
        trainer.train(config)
    assert not os.path.exists(config.model_dir)


def test_input_without_triplets_is_a_clear_error(tmp_path):
    # Single-window recordings: proximity has no anchor-positive pair.
    corpus = str(tmp_path / "corpus")
    os.makedirs(corpus)
    with tf.io.TFRecordWriter(os.path.join(
            corpus, records.shard_name(0, 1))) as writer:
        for r in range(8):
            example = records.make_example(
                np.full((1,) + C.WINDOW_SHAPE, -2.0 + r, np.float32), [0.0],
                "single%d" % r)
            writer.write(example.SerializeToString())
    config = make_config(corpus, tmp_path / "run", "proximity")
    with pytest.raises(ValueError, match="--train_data=.*proximity.*no batch"):
        trainer.train(config)


# ------------------------------------------------- resume = uninterrupted
def test_stop_and_resume_continues_the_optimizer_exactly(corpus, tmp_path,
                                                        monkeypatch):
    """Stopped at N/2 and resumed to N, a run ends where an unbroken one does.

    Compares, step by step and at the end, what a resume must restore
    besides the weights: Adam's slots (first and second moments), its
    iteration count, the step counter and so the learning rate the cosine
    schedule gives at each step. Every step trains on one fixed batch,
    because a resumed run draws a fresh data order by design (see
    `trainer.train`); with the same input the two runs must agree.
    """
    steps, stop_at, peak = 6, 3, 1e-3
    sampler = pipeline.SamplerConfig(sampler="proximity", shuffle_buffer=64)
    fixed = next(iter(pipeline.make_triplet_dataset(corpus, sampler, BATCH,
                                                    seed=0)))
    fixed = tf.nest.map_structure(lambda t: t.numpy(), fixed)
    monkeypatch.setattr(
        pipeline, "make_triplet_dataset",
        lambda *args, **kwargs: tf.data.Dataset.from_tensors(fixed).repeat())

    runs = []  # One per train() call: its optimizer, model and trace.
    run_stop_at = [None]  # Step at which the next train() call is stopped.
    real_make_train_step = train_step.make_train_step

    def recording_train_step(config, strategy, model, optimizer,
                             step_var=None, bad_step=None):
        step_fn = real_make_train_step(config, strategy, model, optimizer,
                                       step_var, bad_step)
        run = {"optimizer": optimizer, "model": model, "trace": {},
               "stop_at": run_stop_at[0]}
        runs.append(run)

        def step(batch):
            out = step_fn(batch)
            current = int(step_var.numpy())
            # After step k: Adam's iteration count and the learning rate its
            # schedule gives there (what the next update would use).
            run["trace"][current] = (int(optimizer.iterations.numpy()),
                                     float(optimizer.learning_rate.numpy()))
            if current == run["stop_at"]:
                # What SIGTERM does, without sending one: call the handler
                # `train` installed.
                handler = signal.getsignal(signal.SIGTERM)
                assert isinstance(getattr(handler, "__self__", None),
                                  loop.StopFlag), handler
                handler(signal.SIGTERM, None)
            return out
        return step

    monkeypatch.setattr(train_step, "make_train_step", recording_train_step)

    def config(name):
        return make_config(corpus, tmp_path / name, steps=steps,
                           lr_schedule="cosine", learning_rate=peak,
                           checkpoint_every=1000)

    full = trainer.train(config("full"))
    run_stop_at[0] = stop_at
    stopped = trainer.train(config("resumed"))
    run_stop_at[0] = None
    resumed = trainer.train(config("resumed"))
    assert len(runs) == 3
    full_run, stopped_run, resumed_run = runs

    assert stopped["interrupted"] and stopped["step"] == stop_at
    assert not full["interrupted"] and not resumed["interrupted"]
    assert full["step"] == resumed["step"] == steps
    assert checkpoint_step(str(tmp_path / "full")) == steps
    assert checkpoint_step(str(tmp_path / "resumed")) == steps
    assert sorted(stopped_run["trace"]) == list(range(1, stop_at + 1))
    # The resumed run starts at the step the stopped one checkpointed.
    assert sorted(resumed_run["trace"]) == list(range(stop_at + 1, steps + 1))

    # Step counter, Adam's iterations and the schedule's learning rate.
    def cosine_lr(k):
        return 0.5 * peak * (1.0 + math.cos(math.pi * k / steps))

    for run in runs:
        for k, (iterations, lr) in run["trace"].items():
            assert iterations == k, (k, iterations)
            assert lr == pytest.approx(cosine_lr(k), rel=1e-5, abs=1e-9), k
            np.testing.assert_allclose(lr, full_run["trace"][k][1],
                                       rtol=1e-6, atol=1e-12)

    # Adam's state (iterations, then a first and a second moment per
    # trainable variable) and the weights, in the same order in both runs.
    full_vars = full_run["optimizer"].variables
    resumed_vars = resumed_run["optimizer"].variables
    num_trainable = len(full_run["model"].trainable_variables)
    assert len(full_vars) == len(resumed_vars) == 1 + 2 * num_trainable
    for a, b in zip(full_vars, resumed_vars):
        a, b = a.numpy(), b.numpy()
        assert a.shape == b.shape
        np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-8)
    # The slots are not trivially equal (both still zero, say).
    assert any(np.abs(v.numpy()).max() > 0 for v in full_vars[1:])
    for a, b in zip(full_run["model"].weights, resumed_run["model"].weights):
        np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-5,
                                   atol=1e-6)


# ------------------------------------------------------------ NaN loss
def test_nonfinite_loss_stops_and_keeps_the_last_good_checkpoint(
        corpus, tmp_path, monkeypatch):
    model_dir = str(tmp_path / "run")
    trainer.train(make_config(corpus, model_dir, steps=3, checkpoint_every=3))
    ckpt_dir = os.path.join(model_dir, run_dir.CHECKPOINT_SUBDIR)
    good = file_digests(ckpt_dir)
    assert checkpoint_step(model_dir) == 3

    # Resumed at step 3, the loss turns NaN from the second step (global step
    # 5) on. Multiplying by NaN also makes the gradients NaN, so the model in
    # memory diverges as a real blow-up would; the next checkpoint boundary
    # (step 6) must not save it.
    real_loss = losses.semi_hard_triplet_loss
    calls = tf.Variable(0, dtype=tf.int64)

    def diverging_loss(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        n = calls.assign_add(1)
        return loss * tf.where(n >= 2, math.nan, 1.0), stats

    monkeypatch.setattr(losses, "semi_hard_triplet_loss", diverging_loss)
    with pytest.raises(loop.NonFiniteLossError,
                       match=r"non-finite at step 5\b.*ckpt-3"):
        trainer.train(make_config(corpus, model_dir, steps=12,
                                   checkpoint_every=3))
    assert file_digests(ckpt_dir) == good
    model, _, step = trainer.restore_model(model_dir)
    assert step == 3
    assert all(np.all(np.isfinite(w)) for w in model.get_weights())


def _flip_byte_of_last_record(path):
    offset, length = list(records.record_frames(path))[-1]
    with open(path, "r+b") as f:  # a payload byte, past the 12-byte header
        f.seek(offset + 12 + length // 2)
        byte = f.read(1)
        f.seek(offset + 12 + length // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    return offset


def test_corrupt_record_names_the_shard_and_skip_corrupt_trains(tmp_path):
    bad_corpus = write_corpus(str(tmp_path / "corpus"))
    shard = records.list_shards(bad_corpus)[1]
    offset = _flip_byte_of_last_record(shard)
    config = make_config(bad_corpus, tmp_path / "run", sampler="noise",
                         steps=200)
    with pytest.raises(records.CorruptShardError) as raised:
        trainer.train(config)
    message = str(raised.value)
    assert "%s: corrupt record at byte %d" % (shard, offset) in message
    assert "--skip_corrupt" in message
    # A run that had taken steps keeps them in a checkpoint.
    step = checkpoint_step(str(tmp_path / "run"))
    assert step is None or 0 < step < 200
    records.SKIPPED.reset()
    summary = trainer.train(make_config(bad_corpus, tmp_path / "skipping",
                                        sampler="noise", steps=3,
                                        skip_corrupt=True))
    assert checkpoint_step(str(tmp_path / "skipping")) == 3
    # The run summary counts what was skipped: the one bad record, where it is.
    skipped = read_summary(str(tmp_path / "skipping"))["skipped_records"]
    assert skipped == summary["skipped_records"]
    assert skipped["records"] == 1
    assert [(s["path"], s["offset"]) for s in skipped["spans"]] == [
        (shard, offset)]


# ----------------------------------------------------- signals (bin/train)
def _train_command(corpus, model_dir, steps, checkpoint_every):
    return [sys.executable, BIN_TRAIN, "--flagfile=flags/demo.cfg",
            "--sampler=proximity", "--train_data=" + corpus,
            "--model_dir=" + model_dir, "--batch_size=%d" % BATCH,
            "--warmup_steps=0", "--shuffle_buffer=64",
            "--steps=%d" % steps, "--checkpoint_every=%d" % checkpoint_every,
            "--log_every=1"]


def _env():
    env = dict(os.environ)
    env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    return env


def _start(command, log_path):
    # The log goes to a file: a full pipe would stall the child.
    with open(log_path, "w") as log:
        return subprocess.Popen(command, cwd=REPO_ROOT, env=_env(),
                                stdout=log, stderr=subprocess.STDOUT)


def _wait_for_checkpoint(process, model_dir, step, log_path):
    """Polls until a checkpoint >= `step` is saved; fails if the child exits.

    "Saved" means recorded in the manager's state file, which is written after
    the checkpoint's files: a kill between the two leaves the previous state.
    """
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while (checkpoint_step(model_dir) or 0) < step:
        if process.poll() is not None:
            with open(log_path) as f:
                pytest.fail("bin/train exited (%d) before checkpoint %d:\n%s" %
                            (process.returncode, step, f.read()[-3000:]))
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("no checkpoint %d within %d s" %
                        (step, SUBPROCESS_TIMEOUT_S))
        time.sleep(0.02)


def test_sigterm_checkpoints_the_current_step_and_exits_3(corpus, tmp_path):
    model_dir = str(tmp_path / "run")
    log_path = str(tmp_path / "train.log")
    process = _start(_train_command(corpus, model_dir, steps=100000,
                                    checkpoint_every=4), log_path)
    try:
        _wait_for_checkpoint(process, model_dir, 4, log_path)
        process.send_signal(signal.SIGTERM)
        returncode = process.wait(timeout=SUBPROCESS_TIMEOUT_S)
    finally:
        if process.poll() is None:
            process.kill()
    with open(log_path) as f:
        log = f.read()
    assert returncode == 3, log[-3000:]
    summary = read_summary(model_dir)
    step = summary["step"]
    assert summary["interrupted"] and step >= 4
    # The checkpoint is of the step it stopped at, not the last periodic one.
    assert checkpoint_step(model_dir) == step
    assert "checkpointed at step %d" % step in log


def test_sigkill_then_rerun_resumes_at_the_saved_step(corpus, tmp_path):
    model_dir = str(tmp_path / "run")
    steps = 40
    command = _train_command(corpus, model_dir, steps=steps,
                             checkpoint_every=5)
    log_path = str(tmp_path / "killed.log")
    process = _start(command, log_path)
    try:
        _wait_for_checkpoint(process, model_dir, 5, log_path)
        assert process.poll() is None, "finished before it could be killed"
        process.send_signal(signal.SIGKILL)
        assert process.wait(timeout=SUBPROCESS_TIMEOUT_S) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
    saved = checkpoint_step(model_dir)
    assert 5 <= saved < steps
    assert not os.path.exists(os.path.join(model_dir, run_dir.SUMMARY_NAME))

    rerun = subprocess.run(command, cwd=REPO_ROOT, env=_env(),
                           capture_output=True, text=True,
                           timeout=SUBPROCESS_TIMEOUT_S)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    assert "resumed from" in log and "at step %d" % saved in log, log[-3000:]
    assert "trained steps %d..%d" % (saved, steps) in log
    summary = read_summary(model_dir)
    assert summary["step"] == steps and not summary["interrupted"]
    assert checkpoint_step(model_dir) == steps
