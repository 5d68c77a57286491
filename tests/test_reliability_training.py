"""Training reliability: the run directory's lock, a full disk, stop_at_step.

The lock and disk tests run `bin/train` as a subprocess where the property is
the binary's (exit status, message, a second process); the rest call the
library. Helpers and the corpus come from test_training.
"""

import json
import logging as std_logging
import os
import resource
import signal
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import test_training  # pylint: disable=g-bad-import-order
from test_training import checkpoint_step
from test_training import make_config
from test_training import read_summary
from triplet_audio.training import run_dir
from triplet_audio.training import trainer

REPO_ROOT = test_training.REPO_ROOT
TIMEOUT_S = test_training.SUBPROCESS_TIMEOUT_S
# Below the small model's checkpoint (5 MB of weights and Adam slots), above
# every other file a run writes (config, summaries, logs).
FILE_SIZE_LIMIT = 1 << 20


@pytest.fixture(scope="module", name="corpus")
def fixture_corpus(tmp_path_factory):
    return test_training.write_corpus(str(tmp_path_factory.mktemp("corpus")))


def _command(corpus, model_dir, steps, checkpoint_every=1000):
    return test_training._train_command(  # pylint: disable=protected-access
        corpus, model_dir, steps, checkpoint_every)


def _listed_checkpoints_load(model_dir):
    """Reads every variable of every checkpoint the state file lists."""
    state = tf.train.get_checkpoint_state(run_dir.checkpoint_dir(model_dir))
    assert state is not None and state.all_model_checkpoint_paths
    for path in state.all_model_checkpoint_paths:
        reader = tf.train.load_checkpoint(path)
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    return list(state.all_model_checkpoint_paths)


# -------------------------------------------------------------- the lock
def test_a_second_lock_on_a_run_directory_names_the_holder(tmp_path):
    first = run_dir.RunLock(str(tmp_path)).acquire()
    try:
        # flock locks belong to open files: a second open in this process
        # collides as another process's would.
        with pytest.raises(run_dir.RunDirBusyError) as e:
            run_dir.RunLock(str(tmp_path)).acquire()
        message = str(e.value)
        assert str(tmp_path) in message
        assert "pid %d" % os.getpid() in message
        assert socket.gethostname() in message
    finally:
        first.release()
    with run_dir.RunLock(str(tmp_path)) as again:  # Released: free again.
        with open(again.path) as f:
            assert json.load(f)["pid"] == os.getpid()


def test_a_sigkilled_holder_leaves_no_stale_lock(tmp_path):
    code = ("import sys, time; from triplet_audio.training import run_dir; "
            "run_dir.RunLock(sys.argv[1]).acquire(); print('locked', "
            "flush=True); time.sleep(300)")
    child = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)],
                             cwd=REPO_ROOT, stdout=subprocess.PIPE,
                             env=test_training._env())  # pylint: disable=protected-access
    try:
        assert child.stdout.readline().strip() == b"locked"
        with pytest.raises(run_dir.RunDirBusyError, match="pid %d" %
                           child.pid):
            run_dir.RunLock(str(tmp_path)).acquire()
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=TIMEOUT_S)
    finally:
        if child.poll() is None:
            child.kill()
        child.stdout.close()
    run_dir.RunLock(str(tmp_path)).acquire().release()


def test_a_path_that_cannot_be_locked_warns_and_goes_on(caplog):
    with caplog.at_level(std_logging.WARNING):
        lock = run_dir.RunLock("gs://bucket/runs/x").acquire()
    lock.release()
    assert any("cannot lock gs://bucket/runs/x" in r.getMessage()
               for r in caplog.records)


def test_each_task_of_a_cluster_has_its_own_lock_name():
    assert run_dir.lock_name(True, "worker", 0) == run_dir.LOCK_NAME
    names = {run_dir.lock_name(False, "worker", i) for i in (1, 2)}
    assert len(names) == 2 and run_dir.LOCK_NAME not in names


@pytest.mark.slow
def test_a_second_trainer_on_one_model_dir_is_refused(corpus, tmp_path):
    model_dir = str(tmp_path / "run")
    # Long enough to outlive the second run; stopped by SIGTERM after it.
    command = _command(corpus, model_dir, steps=100000, checkpoint_every=2)
    log_path = str(tmp_path / "first.log")
    first = test_training._start(command, log_path)  # pylint: disable=protected-access
    try:
        test_training._wait_for_checkpoint(first, model_dir, 2, log_path)  # pylint: disable=protected-access
        with open(os.path.join(model_dir, run_dir.CONFIG_NAME), "rb") as f:
            config_before = f.read()
        second = subprocess.run(command, cwd=REPO_ROOT,
                                env=test_training._env(),  # pylint: disable=protected-access
                                capture_output=True, text=True,
                                timeout=TIMEOUT_S)
        assert first.poll() is None, "the first run ended early"
        first.send_signal(signal.SIGTERM)
        first_status = first.wait(timeout=TIMEOUT_S)
    finally:
        if first.poll() is None:
            first.kill()
    second_log = second.stdout + second.stderr
    assert second.returncode != 0
    assert "--model_dir=%s is in use" % model_dir in second_log
    assert "pid %d on host %s" % (first.pid,
                                  socket.gethostname()) in second_log
    assert "resumed from" not in second_log
    # The first run went on undisturbed: its own graceful stop, its config,
    # a checkpoint of the step it stopped at that loads.
    with open(log_path) as f:
        first_log = f.read()
    assert first_status == 3, first_log[-3000:]
    with open(os.path.join(model_dir, run_dir.CONFIG_NAME), "rb") as f:
        assert f.read() == config_before
    summary = read_summary(model_dir)
    assert summary["interrupted"]
    assert checkpoint_step(model_dir) == summary["step"]
    assert "checkpointed at step %d" % summary["step"] in first_log
    _listed_checkpoints_load(model_dir)


# ------------------------------------------------------------ a full disk
def _limit_file_size():
    # Writes past the limit fail with EFBIG instead of killing the process,
    # as a full disk fails them with ENOSPC.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE,
                       (FILE_SIZE_LIMIT, FILE_SIZE_LIMIT))


@pytest.mark.slow
def test_full_disk_during_a_checkpoint_keeps_the_last_one_and_resumes(
        corpus, tmp_path):
    model_dir = str(tmp_path / "run")
    trainer.train(make_config(corpus, model_dir, steps=4,
                              checkpoint_every=2))
    ckpt_dir = run_dir.checkpoint_dir(model_dir)
    before = sorted(os.listdir(ckpt_dir))
    command = _command(corpus, model_dir, steps=8, checkpoint_every=2)
    full = subprocess.run(command, cwd=REPO_ROOT, env=test_training._env(),  # pylint: disable=protected-access
                          capture_output=True, text=True, timeout=TIMEOUT_S,
                          preexec_fn=_limit_file_size)
    log = full.stdout + full.stderr
    assert full.returncode != 0, log[-3000:]
    error = [l for l in log.splitlines() if l.startswith("error: ")]
    assert error, log[-3000:]
    assert "could not write checkpoint 6 to %s: file too large" % ckpt_dir \
        in error[-1]
    assert "Traceback" not in log
    # The failed save's partial files are gone; the last good one loads.
    assert sorted(os.listdir(ckpt_dir)) == before
    assert checkpoint_step(model_dir) == 4
    _listed_checkpoints_load(model_dir)

    rerun = subprocess.run(command, cwd=REPO_ROOT, env=test_training._env(),  # pylint: disable=protected-access
                           capture_output=True, text=True, timeout=TIMEOUT_S)
    log = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, log[-3000:]
    assert "resumed from %s at step 4" % os.path.join(ckpt_dir, "ckpt-4") \
        in log
    assert checkpoint_step(model_dir) == 8


def test_no_space_is_named_as_such(tmp_path, monkeypatch):
    step_var = tf.Variable(3, dtype=tf.int64)
    checkpoints = run_dir.Checkpoints(tf.train.Checkpoint(step=step_var),
                                      str(tmp_path), 3, True, 0)
    checkpoints.save(3)

    def no_space(checkpoint_number):
        # What a full disk leaves: a partial save of the new step.
        os.makedirs(os.path.join(checkpoints.directory, "ckpt-%d_temp" %
                                 checkpoint_number))
        raise tf.errors.ResourceExhaustedError(
            None, None, "ckpt-4_temp/part-00000; No space left on device")
    monkeypatch.setattr(checkpoints.manager, "save", no_space)
    with pytest.raises(run_dir.CheckpointWriteError) as e:
        checkpoints.save(4)
    assert "checkpoint 4 to %s: no space left on the device" % (
        checkpoints.directory) in str(e.value)
    assert checkpoints.latest.endswith("ckpt-3")
    assert not os.path.exists(os.path.join(checkpoints.directory,
                                           "ckpt-4_temp"))


# ----------------------------------------------------------- stop_at_step
def test_stop_at_step_checkpoints_there_on_the_full_schedule(corpus,
                                                             tmp_path):
    steps, stop_at, peak = 6, 2, 1e-3
    model_dir = str(tmp_path / "run")
    stopped = trainer.train(make_config(
        corpus, model_dir, steps=steps, stop_at_step=stop_at, log_every=1,
        lr_schedule="cosine", learning_rate=peak))
    assert stopped["step"] == stop_at and not stopped["interrupted"]
    assert stopped["steps"] == steps
    assert checkpoint_step(model_dir) == stop_at
    # The learning rate follows the cosine over --steps, not --stop_at_step.
    rates = {}
    for path in tf.io.gfile.glob(os.path.join(
            run_dir.summary_dir(model_dir), "events.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == "learning_rate":
                    rates[event.step] = float(tf.make_ndarray(value.tensor))
    np.testing.assert_allclose(
        rates[stop_at], 0.5 * peak * (1 + np.cos(np.pi * stop_at / steps)),
        rtol=1e-5)
    resumed = trainer.train(make_config(corpus, model_dir, steps=steps,
                                        lr_schedule="cosine",
                                        learning_rate=peak))
    assert resumed["step"] == steps and not resumed["interrupted"]
    assert checkpoint_step(model_dir) == steps


def test_stop_at_step_must_not_be_negative(corpus, tmp_path):
    with pytest.raises(ValueError, match="--stop_at_step"):
        make_config(corpus, tmp_path, stop_at_step=-1).validate()

