"""The numbers DESIGN.md fixes, pinned to literals where the library has them.

Every other test reads `triplet_audio.constants` (that is the constants'
point: one home), so a wrong constant would move the code and its tests
together and pass. Here each design number of DESIGN.md ("The numbers the
paper fixes", plus the evaluation protocol's sample sizes) is written out as
a literal and compared with its home: the front end and window shape in
`constants`, the embedding size in `models` / `training` / the train flags,
the sampler defaults in `pipeline.SamplerConfig` and the sampler flags, the
protocol sizes in `metrics.EvaluationConfig`. The NumPy front-end reference
(tests/numpy_frontend.py) restates the front-end numbers on its own too.
"""

import dataclasses
import inspect
import math

from absl import flags
import numpy as np
import pytest

import numpy_frontend
from triplet_audio import constants as C
from triplet_audio.evaluation import metrics
from triplet_audio.cli import flagdefs
from triplet_audio.model import models
from triplet_audio.sampling import pipeline
from triplet_audio.training import trainer


# ------------------------------------------------------------- front end
@pytest.mark.parametrize("name,value", [
    ("SAMPLE_RATE", 16000),
    ("STFT_WINDOW_SECONDS", 0.025),
    ("STFT_HOP_SECONDS", 0.010),
    ("STFT_WINDOW_SAMPLES", 400),
    ("STFT_HOP_SAMPLES", 160),
    ("FFT_LENGTH", 512),
    ("NUM_SPECTROGRAM_BINS", 257),
    ("NUM_MEL_BANDS", 64),
    ("MEL_LOWER_HZ", 125.0),
    ("MEL_UPPER_HZ", 7500.0),
    ("LOG_OFFSET", 0.01),
    ("WINDOW_FRAMES", 96),
    ("WINDOW_SHAPE", (96, 64)),
    ("WINDOW_SECONDS", 0.96),
    # Non-overlapping windows: one window of hops apart.
    ("WINDOW_HOP_SAMPLES", 96 * 160),
    # 95 hops plus one STFT window.
    ("MIN_WINDOW_SAMPLES", 15600),
])
def test_constant_is_the_design_number(name, value):
    got = getattr(C, name)
    if isinstance(value, float):
        assert got == pytest.approx(value, rel=1e-12), name
    else:
        assert got == value, name


@pytest.mark.parametrize("name", [
    "SAMPLE_RATE", "STFT_WINDOW_SAMPLES", "STFT_HOP_SAMPLES", "FFT_LENGTH",
    "NUM_SPECTROGRAM_BINS", "NUM_MEL_BANDS", "MEL_LOWER_HZ", "MEL_UPPER_HZ",
    "LOG_OFFSET", "WINDOW_FRAMES", "WINDOW_SHAPE", "MIN_WINDOW_SAMPLES"])
def test_numpy_reference_states_the_same_numbers(name):
    # The reference keeps its own literals (it must not import them); they
    # must still be the design numbers.
    assert getattr(numpy_frontend, name) == getattr(C, name), name


def test_frontend_params_name_the_design_front_end():
    assert C.frontend_params() == {
        "sample_rate": 16000,
        "stft_window_samples": 400,
        "stft_hop_samples": 160,
        "fft_length": 512,
        "window_fn": "periodic_hann",
        "magnitude": True,
        "num_mel_bands": 64,
        "mel_lower_hz": 125.0,
        "mel_upper_hz": 7500.0,
        "mel_scale": "htk",
        "log_offset": 0.01,
        "window_frames": 96,
        "window_hop_frames": 96,
        "max_windows_per_record": C.MAX_WINDOWS_PER_RECORD,
    }


def test_silence_has_the_log_of_the_offset_in_every_cell():
    """log(mel + 0.01) of silence is log(0.01) exactly, not within float error.

    Catches a wrong offset directly: log(0.001) is 2.3 away.
    """
    from triplet_audio.features import frontend  # pylint: disable=g-import-not-at-top
    windows = frontend.waveform_to_windows(
        np.zeros(2 * 96 * 160 + 400, np.float32)).numpy()
    assert windows.shape == (2, 96, 64)
    np.testing.assert_allclose(windows, math.log(0.01), rtol=0, atol=1e-6)


# ----------------------------------------------------------------- model
def test_embedding_size_is_128_by_default():
    signature = inspect.signature(models.build_model)
    assert signature.parameters["embedding_size"].default == 128
    assert signature.parameters["name"].default == "resnet50"
    defaults = {f.name: f.default for f in dataclasses.fields(
        trainer.TrainConfig)}
    assert defaults["embedding_size"] == 128
    assert defaults["model"] == "resnet50"
    flagdefs.define_train_flags()
    assert flags.FLAGS["embedding_size"].default == 128
    assert flags.FLAGS["model"].default == "resnet50"


# -------------------------------------------------------------- samplers
_SAMPLER_DEFAULTS = {
    "noise_sigma": 0.5,  # sigma of eps ~ N(0, sigma^2).
    "translation_max_shift": 10,  # S.
    "mixing_alpha": 0.25,  # alpha.
    "proximity_dt": math.inf,  # dt.
}


@pytest.mark.parametrize("name,value", sorted(_SAMPLER_DEFAULTS.items()))
def test_sampler_defaults_are_the_papers(name, value):
    config = pipeline.SamplerConfig(sampler="joint")
    assert getattr(config, name) == value, name
    # What bin/train gets when the flag is not given.
    flagdefs.define_sampler_flags()
    assert flags.FLAGS[name].default == value, name


# ------------------------------------------------------ evaluation protocol
def test_evaluation_protocol_sizes():
    config = metrics.EvaluationConfig()
    # QbE: 100 segments with the class and 100 without.
    assert (config.qbe_num_pos, config.qbe_num_neg) == (100, 100)
    assert config.qbe_min_count is None  # The exact protocol.
    # Classifiers of 512-unit layers; few-shot: 20 per class, 3 draws,
    # 1 x 512 on embeddings and 4 x 512 on log-mel.
    assert config.hidden_units == 512
    assert (config.fewshot_per_class, config.fewshot_draws) == (20, 3)
    assert config.fewshot_layers("proximity") == 1
    assert config.fewshot_layers(metrics.LOGMEL_REPRESENTATION) == 4
    assert metrics.LOGMEL_REPRESENTATION == "logmel"
