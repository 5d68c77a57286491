"""SavedModel export: a trained run directory -> a self-contained SavedModel.

The SavedModel loads with plain `tf.saved_model.load` (no triplet_audio
import) and carries the log-mel front end in its graph. Signatures:

  serving_default(waveform: float32 [num_samples], 16 kHz mono)
      -> window_embeddings float32 [W, D], clip_embedding float32 [D],
         start_times float32 [W] (seconds)
     Clips shorter than one window are zero-padded to one window, exactly as
     `frontend.waveform_to_windows` does.
  embed_logmel(logmel: float32 [B, 96, 64]) -> embeddings float32 [B, D]

Inputs are validated in the graph: a request with the wrong rank or dtype is
refused by the signature itself; an empty input or non-finite values raise
InvalidArgumentError with a message saying which.

Beside it: `metadata.json` (package version, sample rate, front-end
parameters, embedding size, signatures, the training config) and
`model.keras`, a Keras-loadable copy for fine-tuning.
"""

import json
import os
import shutil

from absl import logging
import keras
import tensorflow as tf

import triplet_audio
from triplet_audio.config import jsonio
from triplet_audio import constants as C
from triplet_audio.features import frontend
from triplet_audio.model import models
from triplet_audio.training import run_dir

METADATA_NAME = "metadata.json"
KERAS_NAME = "model.keras"
SAVED_MODEL_SUBDIR = "saved_model"

SERVING_BATCH_WINDOWS = 256
"""Windows per model call inside the signatures: longer inputs are embedded
batch by batch, so memory does not grow with the clip length."""


class EmbeddingModule(tf.Module):
    """The exported object: a Keras embedding model plus the front end."""

    def __init__(self, model):
        super().__init__(name="triplet_audio_embedder")
        self.model = model
        self.embedding_size = int(model.output_shape[-1])

    # The specs leave the rank open on purpose: a loaded signature does not
    # enforce static shapes, so the rank is checked at run time, where a
    # wrong-rank request gets a message that says what was expected.
    @tf.function(input_signature=[
        tf.TensorSpec(None, tf.float32, name="logmel")])
    def embed_logmel(self, logmel):
        """[B, 96, 64] log-mel windows -> {"embeddings": [B, D]}."""
        shape = tf.shape(logmel)
        checks = [
            tf.debugging.assert_equal(
                tf.rank(logmel), 3,
                message="embed_logmel: logmel must be [batch, %d, %d]" %
                C.WINDOW_SHAPE),
        ]
        with tf.control_dependencies(checks):
            checks = [
                tf.debugging.assert_equal(
                    shape[1:], tf.constant(C.WINDOW_SHAPE, tf.int32),
                    message="embed_logmel: logmel must be [batch, %d, %d]" %
                    C.WINDOW_SHAPE),
                tf.debugging.assert_greater(
                    shape[0], 0, message="embed_logmel: empty batch"),
            ]
        with tf.control_dependencies(checks):
            logmel = tf.debugging.assert_all_finite(
                logmel, "embed_logmel: logmel has NaN or Inf values")
        logmel = tf.ensure_shape(logmel, [None] + list(C.WINDOW_SHAPE))
        return {"embeddings": self._embed(logmel)}

    # Named after its signature: TF names the function in the error a
    # wrong-dtype request gets, so the caller sees which signature refused.
    @tf.function(input_signature=[
        tf.TensorSpec(None, tf.float32, name="waveform")])
    def serving_default(self, waveform):
        """16 kHz mono waveform [N] -> window and clip embeddings."""
        with tf.control_dependencies([tf.debugging.assert_equal(
                tf.rank(waveform), 1,
                message="serving_default: waveform must be 1-D [num_samples] "
                "(16 kHz mono)")]):
            waveform = tf.reshape(waveform, [-1])
        checks = [
            tf.debugging.assert_greater(
                tf.size(waveform), 0,
                message="serving_default: waveform is empty"),
            tf.debugging.assert_all_finite(
                waveform, "serving_default: waveform has NaN or Inf samples"),
        ]
        with tf.control_dependencies(checks):
            waveform = tf.identity(waveform)
        windows = frontend.waveform_to_windows(waveform, pad_short=True)
        embeddings = self._embed(windows)
        num_windows = tf.shape(windows)[0]
        start_times = tf.cast(tf.range(num_windows), tf.float32) * (
            C.WINDOW_SECONDS)
        return {
            "window_embeddings": embeddings,
            "clip_embedding": tf.reduce_mean(embeddings, axis=0),
            "start_times": start_times,
        }

    def _embed(self, logmel):
        # Batches the windows so an hour of audio does not become one giant
        # convolution call on the accelerator.
        num = tf.shape(logmel)[0]
        num_batches = (num + SERVING_BATCH_WINDOWS - 1) // SERVING_BATCH_WINDOWS
        outputs = tf.TensorArray(
            tf.float32, size=num_batches, infer_shape=False,
            element_shape=tf.TensorShape([None, self.embedding_size]))

        def body(i, outputs):
            batch = logmel[i * SERVING_BATCH_WINDOWS:
                           (i + 1) * SERVING_BATCH_WINDOWS]
            out = tf.cast(self.model(batch, training=False), tf.float32)
            return i + 1, outputs.write(i, out)

        _, outputs = tf.while_loop(lambda i, _: i < num_batches, body,
                                   (tf.constant(0), outputs))
        return tf.ensure_shape(outputs.concat(), [None, self.embedding_size])


def export_saved_model(model, export_dir, training_config=None,
                       overwrite=False, step=None):
    """Writes the SavedModel, metadata.json and model.keras.

    Args:
      model: the Keras embedding model ([B, 96, 64] -> [B, D]).
      export_dir: output directory; the SavedModel goes to
        export_dir/saved_model.
      training_config: JSON-serialisable training config recorded in the
        metadata (dict or dataclass).
      overwrite: replace an existing export_dir; otherwise refuse.
      step: the training step of the exported weights, for the metadata.

    Returns:
      path of the SavedModel directory.

    Raises:
      FileExistsError: when export_dir holds an export and not `overwrite`.
    """
    saved_dir = os.path.join(export_dir, SAVED_MODEL_SUBDIR)
    if os.path.exists(saved_dir):
        if not overwrite:
            raise FileExistsError(
                "%s already holds an export; pass --overwrite to replace it" %
                export_dir)
        shutil.rmtree(saved_dir)
    os.makedirs(export_dir, exist_ok=True)
    module = EmbeddingModule(model)
    # Write to a temporary name, rename when complete: a crash never leaves a
    # half-written SavedModel that loads.
    tmp_dir = saved_dir + ".incomplete"
    if os.path.exists(tmp_dir):
        shutil.rmtree(tmp_dir)
    tf.saved_model.save(
        module, tmp_dir,
        signatures={
            "serving_default": module.serving_default,
            "embed_logmel": module.embed_logmel,
        })
    os.replace(tmp_dir, saved_dir)
    keras_path = os.path.join(export_dir, KERAS_NAME)
    model.save(keras_path)
    metadata = {
        "package": "triplet-audio",
        "version": triplet_audio.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "sample_rate": C.SAMPLE_RATE,
        "frontend": C.frontend_params(),
        "embedding_size": module.embedding_size,
        "model": models.model_summary_dict(model),
        "step": step,
        "signatures": {
            "serving_default": {
                "inputs": {"waveform": "float32 [num_samples], 16 kHz mono"},
                "outputs": {
                    "window_embeddings": "float32 [W, %d]" %
                                         module.embedding_size,
                    "clip_embedding": "float32 [%d]" % module.embedding_size,
                    "start_times": "float32 [W] seconds",
                },
            },
            "embed_logmel": {
                "inputs": {"logmel": "float32 [B, %d, %d]" % C.WINDOW_SHAPE},
                "outputs": {"embeddings": "float32 [B, %d]" %
                                          module.embedding_size},
            },
        },
        "saved_model": SAVED_MODEL_SUBDIR,
        "keras_model": KERAS_NAME,
        "training_config": jsonio.to_jsonable(training_config or {}),
    }
    jsonio.write_json(os.path.join(export_dir, METADATA_NAME), metadata)
    logging.info("exported %s (step %s) to %s", model.name, step, export_dir)
    return saved_dir


def export_run(model_dir, export_dir, overwrite=False):
    """Exports the latest checkpoint of a training run directory.

    Reads the run's config.json, so nothing needs repeating.

    Args:
      model_dir: a run directory written by `trainer.train`.
      export_dir: output directory.
      overwrite: replace an existing export.

    Returns:
      path of the SavedModel directory.

    Raises:
      FileNotFoundError: if model_dir has no config.json or no checkpoint.
    """
    model, config, step = run_dir.restore_model(model_dir)
    return export_saved_model(model, export_dir, training_config=config,
                              overwrite=overwrite, step=step)


def load_metadata(export_dir):
    """Reads an export's metadata.json."""
    path = os.path.join(export_dir, METADATA_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError("%s has no %s: not a triplet-audio export" %
                                (export_dir, METADATA_NAME))
    with open(path) as f:
        return json.load(f)


def saved_model_path(export_dir):
    """The SavedModel inside an export dir (or export_dir itself if it is one)."""
    inner = os.path.join(export_dir, SAVED_MODEL_SUBDIR)
    if os.path.exists(os.path.join(inner, "saved_model.pb")):
        return inner
    if os.path.exists(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    raise FileNotFoundError("no SavedModel in %s" % export_dir)
