"""The sampler registry: every row is wired, and a seventh sampler is one row.

The toy sampler here is what the README's "Adding a sampler" shows: a
"pairs" sampler whose positive is its anchor reversed in time.
"""

import numpy as np
import pytest

from triplet_audio.config import options
from triplet_audio.config import sampling as sampling_config
from triplet_audio.sampling import pipeline
from triplet_audio.sampling import registry
from triplet_audio.sampling import samplers
from triplet_audio.training import trainer
import test_pipeline  # pylint: disable=g-bad-import-order


def reverse_sampler(pairs, seed):
    del seed  # deterministic
    return samplers.augmentation_triplets(
        pairs, pairs[samplers.LOGMEL][:, 0, ::-1], "reverse")


@pytest.fixture(name="reverse")
def fixture_reverse():
    row = registry.register(registry.Sampler("reverse", "pairs",
                                             reverse_sampler))
    yield row
    registry.unregister("reverse")


def test_every_sampler_name_has_a_row_and_back():
    assert registry.names() == options.SAMPLERS
    for name in options.SAMPLERS:
        row = registry.get(name)
        assert row.stream in registry.STREAMS
        assert (name in options.UNSUPERVISED_SAMPLERS) == (
            row.unsupervised and row.stream != "mixture")
        # Every parameter names a SamplerConfig field.
        config = sampling_config.SamplerConfig(sampler=name)
        assert set(row.kwargs(config)) == set(row.params)
    with pytest.raises(ValueError, match="--sampler: unknown sampler 'nope'"):
        registry.get("nope")
    with pytest.raises(ValueError, match="already registered"):
        registry.register(registry.Sampler("noise", "pairs"))


def test_a_new_sampler_is_one_row(reverse, tmp_path):
    assert "reverse" in options.SAMPLERS
    assert "reverse" in options.UNSUPERVISED_SAMPLERS
    lookup = test_pipeline.write_corpus(
        str(tmp_path / "corpus"), test_pipeline._recording_specs(), 2)
    config = sampling_config.SamplerConfig(sampler="reverse",
                                           shuffle_buffer=16)
    windows, labels = next(iter(pipeline.make_triplet_dataset(
        str(tmp_path / "corpus"), config, 12, seed=0)))
    windows, labels = windows.numpy(), labels.numpy()
    for i in range(0, 12, 3):
        np.testing.assert_array_equal(windows[i + 1], windows[i][::-1])
        assert windows[i].tobytes() in lookup
        assert labels[i] == labels[i + 1] != labels[i + 2]
    # ... and joins joint by default.
    joint = sampling_config.SamplerConfig(sampler="joint")
    assert dict(joint.active_joint_samplers())["reverse"] > 0
    # Two training steps through the trainer, as --sampler=reverse would.
    train = trainer.TrainConfig(
        train_data=str(tmp_path / "corpus"), model_dir=str(tmp_path / "run"),
        sampler=config, model="small", batch_size=12, steps=2,
        checkpoint_every=1000, log_every=1000, lr_schedule="constant")
    summary = trainer.train(train.validate())
    assert summary["step"] == 2
    assert np.isfinite(summary["metrics"]["loss"])


def test_unregistered_names_are_gone(reverse):
    registry.unregister("reverse")
    assert "reverse" not in options.SAMPLERS
    with pytest.raises(ValueError, match="--sampler"):
        sampling_config.SamplerConfig(sampler="reverse")
    registry.register(reverse)  # for the fixture's teardown
