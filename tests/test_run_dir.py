"""The run directory (training/run_dir.py) and the small parts of the loop.

Fast: no training. A trained run directory is covered by test_training.py.
"""

import json
import os

from absl import logging
import numpy as np
import pytest
import tensorflow as tf

from triplet_audio.config import jsonio
from triplet_audio.config import sampling
from triplet_audio.config import training as train_config
from triplet_audio.model import models
from triplet_audio.training import loop
from triplet_audio.training import run_dir
from triplet_audio.training import trainer


def _config(sampler="noise", **kwargs):
    kwargs = dict(dict(model="small", embedding_size=8), **kwargs)
    return train_config.TrainConfig(
        train_data="/data/corpus", model_dir="/tmp/unused",
        sampler=sampling.SamplerConfig(sampler=sampler), **kwargs)


CONFIG = _config()


def _checkpoint(model_dir, step, seed=1, keep=3, is_chief=True, task_id=0):
    model = models.build_model("small", 8, seed=seed)
    step_var = tf.Variable(step, dtype=tf.int64)
    checkpoint = tf.train.Checkpoint(model=model, step=step_var)
    return model, run_dir.Checkpoints(checkpoint, model_dir, keep, is_chief,
                                      task_id)


def test_paths():
    assert run_dir.checkpoint_dir("/r") == "/r/checkpoints"
    assert run_dir.summary_dir("/r") == "/r/train"
    assert run_dir.summary_path("/r") == "/r/train_summary.json"
    assert run_dir.CONFIG_NAME == jsonio.CONFIG_NAME == "config.json"


def test_config_round_trips_and_is_written_atomically(tmp_path):
    model_dir = str(tmp_path / "run")
    path = run_dir.write_config(model_dir, CONFIG)
    assert path == os.path.join(model_dir, "config.json")
    assert run_dir.read_config(model_dir) == jsonio.to_jsonable(CONFIG)
    assert run_dir.load_config(model_dir) == CONFIG
    assert os.listdir(model_dir) == ["config.json"]
    with pytest.raises(FileNotFoundError, match="config.json"):
        run_dir.read_config(str(tmp_path / "none"))


def test_a_new_run_directory_is_compatible(tmp_path):
    run_dir.check_resume_compatible(str(tmp_path / "new"), CONFIG)


@pytest.mark.parametrize("field,value", [("model", "resnet50"),
                                         ("embedding_size", 64),
                                         ("mixed_precision", "bf16")])
def test_resume_check_names_a_changed_locked_field(tmp_path, field, value):
    run_dir.write_config(str(tmp_path), CONFIG)
    other = _config(**{field: value})
    with pytest.raises(ValueError, match="--%s=%s but .* was trained with "
                       "%s=" % (field, value, field)):
        run_dir.check_resume_compatible(str(tmp_path), other)


def test_resume_check_allows_another_sampler_with_a_warning(tmp_path,
                                                            monkeypatch):
    run_dir.write_config(str(tmp_path), CONFIG)
    warnings = []
    monkeypatch.setattr(logging, "warning",
                        lambda fmt, *args: warnings.append(fmt % args))
    run_dir.check_resume_compatible(
        str(tmp_path), _config(sampler="mixing"))
    assert len(warnings) == 1 and "noise" in warnings[0], warnings
    assert "mixing" in warnings[0]


def test_summary_round_trips_as_strict_json(tmp_path):
    model_dir = str(tmp_path)
    assert run_dir.read_summary(model_dir) is None
    summary = {"step": 3, "metrics": {"loss": 0.5, "odd": float("nan")},
               "interrupted": False}
    run_dir.write_summary(model_dir, summary)
    with open(run_dir.summary_path(model_dir)) as f:
        text = f.read()
    assert "NaN" not in text and text.endswith("\n")
    assert json.loads(text)["metrics"] == {"loss": 0.5, "odd": None}
    assert run_dir.read_summary(model_dir)["step"] == 3
    assert sorted(os.listdir(model_dir)) == [run_dir.SUMMARY_NAME]


def test_checkpoints_are_numbered_by_step_and_restore(tmp_path):
    model_dir = str(tmp_path)
    assert run_dir.latest_checkpoint(model_dir) is None
    model, ckpts = _checkpoint(model_dir, 5)
    assert ckpts.restore() is None
    path = ckpts.save(5)
    assert path.endswith("ckpt-5") and ckpts.latest == path
    assert run_dir.latest_checkpoint(model_dir) == path

    restored, config, step = run_dir.restore_model(model_dir, _config(seed=7))
    assert step == 5 and config.seed == 7
    windows = np.random.default_rng(0).normal(
        -2.0, 1.0, (3, 96, 64)).astype(np.float32)
    np.testing.assert_allclose(restored(windows, training=False).numpy(),
                               model(windows, training=False).numpy(),
                               atol=1e-6)


def test_a_worker_s_saves_go_to_the_chief_s_name_and_leave_no_files(
        tmp_path):
    model_dir = str(tmp_path)
    os.makedirs(os.path.join(model_dir, "worker_tmp_1", "stale"))
    _, ckpts = _checkpoint(model_dir, 2, is_chief=False, task_id=1)
    # A scratch directory left by a killed worker is removed at start.
    assert not os.path.exists(os.path.join(model_dir, "worker_tmp_1"))
    path = ckpts.save(2)
    assert path == os.path.join(run_dir.checkpoint_dir(model_dir), "ckpt-2")
    assert not os.path.exists(os.path.join(model_dir, "worker_tmp_1"))
    assert ckpts.latest is None  # Nothing of the chief's yet.


def test_restore_model_reads_config_json_when_not_given(tmp_path):
    model_dir = str(tmp_path)
    with pytest.raises(FileNotFoundError, match="config.json"):
        run_dir.restore_model(model_dir)
    run_dir.write_config(model_dir, CONFIG)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        run_dir.restore_model(model_dir)
    _checkpoint(model_dir, 4)[1].save(4)
    model, config, step = run_dir.restore_model(model_dir)
    assert config == CONFIG and step == 4
    assert int(model.output_shape[-1]) == 8


@pytest.mark.parametrize("batch_size,replicas,ok", [
    (24, 1, True), (24, 2, True), (24, 4, True), (24, 8, True),
    (18, 2, True), (24, 5, False), (12, 3, False), (6, 3, False),
    (30, 4, False)])
def test_whole_triplets_per_replica(batch_size, replicas, ok):
    if ok:
        trainer.check_whole_triplets_per_replica(batch_size, replicas)
    else:
        with pytest.raises(ValueError, match="--batch_size=%d must be a "
                           "multiple of 3 x %d replicas" %
                           (batch_size, replicas)):
            trainer.check_whole_triplets_per_replica(batch_size, replicas)


def test_fmt_eta():
    assert loop.fmt_eta(0) == "0:00:00"
    assert loop.fmt_eta(-5) == "0:00:00"
    assert loop.fmt_eta(3725.9) == "1:02:05"
