"""SavedModel export: a trained run directory -> a self-contained SavedModel.

The SavedModel loads with plain `tf.saved_model.load` (no triplet_audio
import) and carries the log-mel front end in its graph. Signatures:

  serving_default(waveform: float32 [num_samples], 16 kHz mono)
      -> window_embeddings float32 [W, D], clip_embedding float32 [D],
         start_times float32 [W] (seconds)
     Clips shorter than one window are zero-padded to one window, exactly as
     `frontend.waveform_to_windows` does.
     Windows are 0.96 s, `window_hop_seconds` apart (bin/export
     --window_hop_seconds, default 0.96: non-overlapping), made and embedded
     step by step as embed_waveforms does (below), so an hour of audio needs
     no more working memory than a minute.
  embed_logmel(logmel: float32 [B, 96, 64]) -> embeddings float32 [B, D]
  embed_waveforms(waveforms: float32 [B, N], hop_seconds: float32 [])
      -> window_embeddings float32 [B, W, D], clip_embeddings float32 [B, D],
         start_times float32 [W] (seconds)
     B equal-length 16 kHz waveforms, windows every `hop_seconds` (a
     multiple of 0.01 s from 0.01 to 0.96): the overlapping framing is done
     in the graph, on the whole batch at once. Long inputs are cut into
     steps of at most `SERVING_BATCH_WINDOWS` windows (over the batch), each
     computing the STFT of its own stretch of samples only, so the working
     memory does not grow with the waveform's length (only the input and
     the [B, W, D] output do). Waveforms shorter than one window are
     zero-padded to one window.

Inputs are validated in the graph, so TF Serving enforces it too: a request
with the wrong dtype, rank or inner shape, an empty or non-finite input, a
bad hop, or more audio than `MAX_REQUEST_SECONDS` (more windows than
`MAX_REQUEST_WINDOWS` for embed_logmel) raises InvalidArgumentError with a
message naming the signature and saying what was expected; so do embeddings
that come out NaN or Inf (finite samples too large to square in float32),
rather than being returned. The limits are in metadata.json ("limits").

Beside it: `metadata.json` (package version, sample rate, front-end
parameters, embedding size, window hop, signatures, the training config) and
`model.keras`, a Keras-loadable copy for fine-tuning. With `tflite_variants`
(bin/export --tflite), TFLite models of the front end and the model
(`export_tflite`).
"""

import json
import os
import shutil

from absl import logging
import keras
import tensorflow as tf

import triplet_audio
from triplet_audio.features import records
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

MAX_REQUEST_SECONDS = 3600.0
"""The most audio one waveform request may carry: an hour at 16 kHz (summed
over embed_waveforms' batch, each waveform counted as at least the one window
it is padded to). The working memory does not grow with the length; the
request does (230 MB of float32, about 1 GB as TF Serving JSON), so longer
audio is sent in pieces (the HEAR API cuts its own)."""

MAX_REQUEST_SAMPLES = int(MAX_REQUEST_SECONDS * C.SAMPLE_RATE)

MAX_REQUEST_WINDOWS = 16384
"""The most log-mel windows one embed_logmel request may carry (400 MB of
float32): far above an accelerator's batch (bin/embed sends 512)."""

TFLITE_NAMES = {"float32": "model.tflite", "float16": "model_float16.tflite",
                "int8": "model_int8.tflite"}
"""File name of each TFLite variant in the export directory."""


class EmbeddingModule(tf.Module):
    """The exported object: a Keras embedding model plus the front end.

    Args:
      model: the Keras embedding model ([B, 96, 64] -> [B, D]).
      window_hop_seconds: hop between the windows of `serving_default` (and
        of the TFLite models).
    """

    def __init__(self, model, window_hop_seconds=C.DEFAULT_WINDOW_HOP_SECONDS):
        super().__init__(name="triplet_audio_embedder")
        self.model = model
        self.embedding_size = int(model.output_shape[-1])
        self.window_hop_frames = C.window_hop_frames(window_hop_seconds)

    # The specs leave the rank open on purpose: a loaded signature does not
    # enforce static shapes, so the rank is checked at run time, where a
    # wrong-rank request gets a message that says what was expected.
    @tf.function(input_signature=[
        tf.TensorSpec(None, tf.float32, name="logmel")])
    def embed_logmel(self, logmel):
        """[B, 96, 64] log-mel windows -> {"embeddings": [B, D]}."""
        shape = tf.shape(logmel)
        # One test that holds for any rank: comparing shape[1:] with
        # [96, 64] under a control dependency on a rank check still ran
        # first on a scalar or 4-D request, and failed with "Incompatible
        # shapes: [2] vs. [3]", naming neither signature nor shape.
        inner = tf.concat([shape, tf.zeros([3], tf.int32)], 0)[1:3]
        checks = [
            tf.debugging.Assert(
                tf.logical_and(
                    tf.equal(tf.size(shape), 3),
                    tf.reduce_all(tf.equal(inner, C.WINDOW_SHAPE))),
                ["embed_logmel: logmel must be [batch, %d, %d], got shape" %
                 C.WINDOW_SHAPE, shape]),
        ]
        with tf.control_dependencies(checks):
            shape = tf.identity(shape)
            checks = [
                tf.debugging.assert_greater(
                    shape[0], 0, message="embed_logmel: empty batch"),
                tf.debugging.assert_less_equal(
                    shape[0], MAX_REQUEST_WINDOWS,
                    message="embed_logmel: more than %d windows in one "
                    "request; send them in batches" % MAX_REQUEST_WINDOWS),
            ]
        with tf.control_dependencies(checks):
            logmel = tf.debugging.assert_all_finite(
                logmel, "embed_logmel: logmel has NaN or Inf values")
        logmel = tf.ensure_shape(logmel, [None] + list(C.WINDOW_SHAPE))
        return {"embeddings": _checked_finite(
            self._embed(logmel), logmel, "embed_logmel",
            "log-mel values are expected as the front end makes them, "
            "log(mel + %g)" % C.LOG_OFFSET)}

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
            tf.debugging.assert_less_equal(
                tf.size(waveform), MAX_REQUEST_SAMPLES,
                message=_too_long_message("serving_default", "waveform")),
            tf.debugging.assert_all_finite(
                waveform, "serving_default: waveform has NaN or Inf samples"),
        ]
        with tf.control_dependencies(checks):
            waveform = tf.identity(waveform)
        # The stepped path at every hop (the default one included): the
        # whole-clip framing it replaced held the STFT of the whole clip,
        # 1.7 GB more for an hour of audio; the embeddings agree to 1e-6.
        out = self._embed_waveforms(waveform[tf.newaxis],
                                    tf.constant(self.window_hop_frames),
                                    "serving_default")
        return {"window_embeddings": out["window_embeddings"][0],
                "clip_embedding": out["clip_embeddings"][0],
                "start_times": out["start_times"]}

    @tf.function(input_signature=[
        tf.TensorSpec(None, tf.float32, name="waveforms"),
        tf.TensorSpec(None, tf.float32, name="hop_seconds")])
    def embed_waveforms(self, waveforms, hop_seconds):
        """[B, N] 16 kHz waveforms, windows every hop_seconds -> embeddings."""
        name = "embed_waveforms"
        with tf.control_dependencies([
                tf.debugging.assert_equal(
                    tf.rank(waveforms), 2,
                    message="%s: waveforms must be 2-D [batch, num_samples] "
                    "(16 kHz mono)" % name),
                tf.debugging.assert_equal(
                    tf.rank(hop_seconds), 0,
                    message="%s: hop_seconds must be a scalar" % name)]):
            shape = tf.shape(waveforms)
            hop_seconds = tf.reshape(hop_seconds, [])
        # Each waveform is padded to at least one window before framing:
        # many tiny ones are as costly as that many windows of audio.
        padded_samples = tf.cast(shape[0], tf.int64) * tf.maximum(
            tf.cast(shape[1], tf.int64), C.MIN_WINDOW_SAMPLES)
        checks = [
            tf.debugging.assert_greater(
                tf.reduce_min(shape), 0,
                message="%s: waveforms is empty" % name),
            tf.debugging.assert_less_equal(
                padded_samples, tf.constant(MAX_REQUEST_SAMPLES, tf.int64),
                message=_too_long_message(
                    name, "waveforms (batch x max(num_samples, %d))" %
                    C.MIN_WINDOW_SAMPLES)),
            tf.debugging.assert_all_finite(
                waveforms, "%s: waveforms has NaN or Inf samples" % name),
            tf.debugging.assert_all_finite(
                hop_seconds, "%s: hop_seconds is NaN or Inf" % name),
        ]
        with tf.control_dependencies(checks):
            waveforms = tf.reshape(waveforms, shape)
            hop_frames = tf.cast(
                tf.round(hop_seconds / C.STFT_HOP_SECONDS), tf.int32)
        hop_message = ("%s: hop_seconds must be a multiple of %g s from %g "
                       "to %g" % (name, C.STFT_HOP_SECONDS,
                                  C.STFT_HOP_SECONDS, C.WINDOW_SECONDS))
        checks = [
            tf.debugging.assert_greater_equal(hop_frames, 1,
                                              message=hop_message),
            tf.debugging.assert_less_equal(hop_frames, C.WINDOW_FRAMES,
                                           message=hop_message),
            tf.debugging.assert_less_equal(
                tf.abs(hop_seconds - tf.cast(hop_frames, tf.float32) *
                       C.STFT_HOP_SECONDS), 1e-4, message=hop_message),
        ]
        with tf.control_dependencies(checks):
            hop_frames = tf.identity(hop_frames)
        return self._embed_waveforms(waveforms, hop_frames, name)

    def _embed_waveforms(self, waveforms, hop_frames, name):
        """[B, N] valid waveforms, int32 hop -> embed_waveforms' outputs.

        The windows are made and embedded step by step: step i takes windows
        [i k, (i + 1) k) of every waveform (k = SERVING_BATCH_WINDOWS // B,
        at least 1), computes the log-mel frames of just the samples they
        span, frames them `hop_frames` apart and runs the model on the B k
        windows. The frames of a step are those of the whole waveform (a
        step starts on a whole STFT hop), so the result does not depend on
        k. `name` (the signature) heads the error of a non-finite result.
        """
        waveforms = tf.pad(waveforms, [[0, 0], [0, tf.maximum(
            C.MIN_WINDOW_SAMPLES - tf.shape(waveforms)[1], 0)]])
        batch = tf.shape(waveforms)[0]
        num_frames = 1 + (tf.shape(waveforms)[1] - C.STFT_WINDOW_SAMPLES) // (
            C.STFT_HOP_SAMPLES)
        num_windows = 1 + (num_frames - C.WINDOW_FRAMES) // hop_frames
        per_step = tf.maximum(1, SERVING_BATCH_WINDOWS // batch)
        num_steps = (num_windows + per_step - 1) // per_step
        outputs = tf.TensorArray(
            tf.float32, size=num_steps, infer_shape=False,
            element_shape=tf.TensorShape([None, None, self.embedding_size]))

        def body(i, outputs):
            first = i * per_step
            count = tf.minimum(per_step, num_windows - first)
            start = first * hop_frames * C.STFT_HOP_SAMPLES
            length = ((count - 1) * hop_frames + C.WINDOW_FRAMES - 1) * (
                C.STFT_HOP_SAMPLES) + C.STFT_WINDOW_SAMPLES
            piece = waveforms[:, start:start + length]
            windows = frontend.logmel_to_windows(
                frontend.waveform_to_logmel(piece), hop_frames)
            flat = tf.reshape(windows, [-1] + list(C.WINDOW_SHAPE))
            out = tf.cast(self.model(flat, training=False), tf.float32)
            out = tf.reshape(out, [batch, count, self.embedding_size])
            # Steps are concatenated along axis 0: windows first.
            return i + 1, outputs.write(i, tf.transpose(out, [1, 0, 2]))

        # One step at a time: the steps are independent, and the default
        # (10 in flight) held up to 10 steps' STFTs at once, so memory grew
        # with the length after all.
        _, outputs = tf.while_loop(lambda i, _: i < num_steps, body,
                                   (tf.constant(0), outputs),
                                   parallel_iterations=1)
        embeddings = tf.transpose(outputs.concat(), [1, 0, 2])
        embeddings = tf.ensure_shape(embeddings,
                                     [None, None, self.embedding_size])
        embeddings = _checked_finite(
            embeddings, waveforms, name,
            "16 kHz samples are expected in [-1, 1]")
        return {
            "window_embeddings": embeddings,
            "clip_embeddings": tf.reduce_mean(embeddings, axis=1),
            "start_times": frontend.window_start_seconds(num_windows,
                                                         hop_frames),
        }

    def tflite_function(self):
        """The function the TFLite models hold: no asserts, no loops.

        waveform float32 [num_samples] (16 kHz mono) -> window_embeddings
        [W, D] (windows `window_hop_frames` apart, a clip shorter than one
        window zero-padded to one, as serving_default) and clip_embedding
        [D]. TFLite has no in-graph input checks (the converter keeps no
        asserts): the caller keeps the samples finite (NaN in, NaN out) and
        the waveform 1-D (another rank fails in a TFLite kernel, "PAD ...
        dims"); an empty waveform is embedded as one zero-padded window.
        """
        hop_frames = self.window_hop_frames

        @tf.function(input_signature=[
            tf.TensorSpec([None], tf.float32, name="waveform")])
        def serve(waveform):
            windows = frontend.waveform_to_windows(waveform, pad_short=True,
                                                   hop_frames=hop_frames)
            embeddings = tf.cast(self.model(windows, training=False),
                                 tf.float32)
            return {"window_embeddings": embeddings,
                    "clip_embedding": tf.reduce_mean(embeddings, axis=0)}
        return serve

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


def _too_long_message(signature, what):
    return ("%s: %s has more samples than the limit of %d (%g s of 16 kHz "
            "audio) per request; send it in pieces" % (
                signature, what, MAX_REQUEST_SAMPLES, MAX_REQUEST_SECONDS))


def _checked_finite(embeddings, inputs, signature, expected):
    """`embeddings`, or InvalidArgumentError when any is NaN or Inf.

    Finite input can still overflow: samples of 1e19 or more square to Inf
    in the power spectrum, and the model returned NaN without a word.
    """
    def report():
        # In the branch, so the largest |value| (a pass over the request)
        # is computed only for the error message.
        largest = tf.maximum(tf.reduce_max(inputs), -tf.reduce_min(inputs))
        with tf.control_dependencies([tf.debugging.Assert(False, [
                "%s: the embeddings came out NaN or Inf: the input values "
                "are too large (%s); the largest |value| in the request is"
                % (signature, expected), largest])]):
            return tf.constant(False)
    ok = tf.cond(tf.reduce_all(tf.math.is_finite(embeddings)),
                 lambda: tf.constant(True), report)
    with tf.control_dependencies([ok]):
        return tf.identity(embeddings)


def export_saved_model(model, export_dir, training_config=None,
                       overwrite=False, step=None,
                       window_hop_seconds=C.DEFAULT_WINDOW_HOP_SECONDS,
                       tflite_variants=()):
    """Writes the SavedModel, metadata.json and model.keras (and TFLite).

    Args:
      model: the Keras embedding model ([B, 96, 64] -> [B, D]).
      export_dir: output directory; the SavedModel goes to
        export_dir/saved_model.
      training_config: JSON-serialisable training config recorded in the
        metadata (dict or dataclass).
      overwrite: replace an existing export_dir; otherwise refuse.
      step: the training step of the exported weights, for the metadata.
      window_hop_seconds: hop between the windows of serving_default and of
        the TFLite models (a multiple of 0.01 s, 0.01-0.96; default 0.96,
        non-overlapping).
      tflite_variants: TFLite models to write beside the SavedModel, from
        `TFLITE_NAMES` ("float32", "float16", "int8"); see `export_tflite`.

    Returns:
      path of the SavedModel directory.

    Raises:
      FileExistsError: when export_dir holds an export and not `overwrite`.
      ValueError: on a window hop or TFLite variant that does not exist.
    """
    hop_frames = C.window_hop_frames(window_hop_seconds)
    unknown = sorted(set(tflite_variants) - set(TFLITE_NAMES))
    if unknown:
        raise ValueError("tflite_variants: %s not among %s" % (
            ", ".join(unknown), ", ".join(TFLITE_NAMES)))
    saved_dir = os.path.join(export_dir, SAVED_MODEL_SUBDIR)
    if os.path.exists(saved_dir):
        if not overwrite:
            raise FileExistsError(
                "%s already holds an export; pass --overwrite to replace it" %
                export_dir)
        shutil.rmtree(saved_dir)
    os.makedirs(export_dir, exist_ok=True)
    module = EmbeddingModule(model, hop_frames * C.STFT_HOP_SECONDS)
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
            "embed_waveforms": module.embed_waveforms,
        })
    os.replace(tmp_dir, saved_dir)
    keras_path = os.path.join(export_dir, KERAS_NAME)
    model.save(keras_path)
    for name in TFLITE_NAMES.values():  # none left from an earlier export
        if os.path.exists(os.path.join(export_dir, name)):
            os.remove(os.path.join(export_dir, name))
    tflite = export_tflite(module, export_dir, tflite_variants)
    d = module.embedding_size
    metadata = {
        "package": "triplet-audio",
        "version": triplet_audio.__version__,
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "sample_rate": C.SAMPLE_RATE,
        "frontend": C.frontend_params(),
        "embedding_size": d,
        "window_hop_seconds": round(hop_frames * C.STFT_HOP_SECONDS, 6),
        "limits": {
            "max_request_seconds": MAX_REQUEST_SECONDS,
            "max_request_samples": MAX_REQUEST_SAMPLES,
            "max_request_windows": MAX_REQUEST_WINDOWS,
            "note": "per request, checked in the graph: waveform samples "
                    "(embed_waveforms: batch x max(num_samples, %d)), "
                    "embed_logmel windows" % C.MIN_WINDOW_SAMPLES,
        },
        "model": models.model_summary_dict(model),
        "step": step,
        "signatures": {
            "serving_default": {
                "inputs": {"waveform": "float32 [num_samples], 16 kHz mono"},
                "outputs": {
                    "window_embeddings": "float32 [W, %d]" % d,
                    "clip_embedding": "float32 [%d]" % d,
                    "start_times": "float32 [W] seconds",
                },
            },
            "embed_logmel": {
                "inputs": {"logmel": "float32 [B, %d, %d]" % C.WINDOW_SHAPE},
                "outputs": {"embeddings": "float32 [B, %d]" % d},
            },
            "embed_waveforms": {
                "inputs": {"waveforms": "float32 [B, num_samples], 16 kHz "
                                        "mono",
                           "hop_seconds": "float32 [], a multiple of 0.01 "
                                          "from 0.01 to 0.96"},
                "outputs": {
                    "window_embeddings": "float32 [B, W, %d]" % d,
                    "clip_embeddings": "float32 [B, %d]" % d,
                    "start_times": "float32 [W] seconds",
                },
            },
        },
        "saved_model": SAVED_MODEL_SUBDIR,
        "keras_model": KERAS_NAME,
        "tflite": tflite,
        "training_config": jsonio.to_jsonable(training_config or {}),
    }
    jsonio.write_json(os.path.join(export_dir, METADATA_NAME), metadata)
    logging.info("exported %s (step %s) to %s", model.name, step, export_dir)
    return saved_dir


def export_tflite(module, export_dir, variants=("float32", "float16")):
    """Writes TFLite models of `module.tflite_function()` to export_dir.

    Each model takes a 16 kHz waveform and holds the log-mel front end
    (the STFT is TFLite's builtin RFFT2D; no TensorFlow ops are needed at
    run time) and the embedding model. Variants:

      * "float32": the weights as they are (`TFLITE_NAMES` gives the files);
      * "float16": weights stored as float16, computed in float32 (half the
        file);
      * "int8": dynamic-range quantisation, weights stored as int8 and
        matrix products computed in int8 with activations quantised on the
        fly (a quarter of the file, faster on CPU, least exact).

    The weights are frozen into constants before conversion: TF 2.21's
    converter keeps Keras 3 variables as resource variables that a TFLite
    interpreter never initialises (the model ran, and returned NaN).

    Args:
      module: an `EmbeddingModule`.
      export_dir: directory to write the .tflite files to.
      variants: names among `TFLITE_NAMES`.

    Returns:
      {variant: {"file", "bytes", "input", "outputs"}} of what was written.
    """
    # convert_to_constants is what the converter itself uses to freeze
    # graphs; it has no public alias.
    from tensorflow.python.framework import convert_to_constants  # pylint: disable=g-import-not-at-top,g-direct-tensorflow-import
    if not variants:
        return {}
    function = module.tflite_function().get_concrete_function()
    frozen = convert_to_constants.convert_variables_to_constants_v2(function)
    holder = tf.Module()
    # The frozen graph returns a flat list; a function that packs it back
    # gives the TFLite signature the output names ("window_embeddings",
    # "clip_embedding") and the input name "waveform".
    holder.serve = tf.function(
        lambda waveform: tf.nest.pack_sequence_as(
            function.structured_outputs,
            tf.nest.flatten(frozen(waveform=waveform))),
        input_signature=[tf.TensorSpec([None], tf.float32, name="waveform")])
    concrete = holder.serve.get_concrete_function()
    d = module.embedding_size
    written = {}
    for variant in variants:
        converter = tf.lite.TFLiteConverter.from_concrete_functions(
            [concrete], holder)
        if variant in ("float16", "int8"):
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if variant == "float16":
            converter.target_spec.supported_types = [tf.float16]
        content = converter.convert()
        path = os.path.join(export_dir, TFLITE_NAMES[variant])
        tmp = path + ".incomplete"
        with open(tmp, "wb") as f:
            f.write(content)
        os.replace(tmp, path)
        written[variant] = {
            "file": TFLITE_NAMES[variant],
            "bytes": len(content),
            "input": "waveform float32 [num_samples], 16 kHz mono",
            "outputs": {"window_embeddings": "float32 [W, %d]" % d,
                        "clip_embedding": "float32 [%d]" % d},
        }
        logging.info("wrote %s (%s, %.1f MB)", path, variant,
                     len(content) / 1e6)
    return written


def export_run(model_dir, export_dir, overwrite=False,
               window_hop_seconds=C.DEFAULT_WINDOW_HOP_SECONDS,
               tflite_variants=()):
    """Exports the latest checkpoint of a training run directory.

    Reads the run's config.json, so nothing needs repeating.

    Args:
      model_dir: a run directory written by `trainer.train`.
      export_dir: output directory.
      overwrite: replace an existing export.
      window_hop_seconds: see `export_saved_model`.
      tflite_variants: see `export_saved_model`.

    Returns:
      path of the SavedModel directory.

    Raises:
      FileNotFoundError: if model_dir has no config.json or no checkpoint.
    """
    model, config, step = run_dir.restore_model(model_dir)
    return export_saved_model(model, export_dir, training_config=config,
                              overwrite=overwrite, step=step,
                              window_hop_seconds=window_hop_seconds,
                              tflite_variants=tflite_variants)


def load_metadata(export_dir):
    """Reads an export's metadata.json."""
    path = os.path.join(export_dir, METADATA_NAME)
    if not os.path.exists(path):
        raise FileNotFoundError("%s has no %s: not a triplet-audio export" %
                                (export_dir, METADATA_NAME))
    with open(path) as f:
        return json.load(f)


def checked_metadata(export_dir, remedy):
    """Where an export's SavedModel is, and its metadata, front end checked.

    Accepts the export directory or the SavedModel directory inside it (whose
    metadata.json is in the directory above).

    Args:
      export_dir: the export (or its inner SavedModel) directory.
      remedy: what the front-end mismatch message tells the user to do.

    Returns:
      (SavedModel path, metadata directory, metadata dict or None when the
      export has no metadata.json).

    Raises:
      FileNotFoundError: when there is no SavedModel.
      records.FrontendMismatchError: when the export was made with another
        front end than this code's.
    """
    path = saved_model_path(export_dir)
    meta_dir = export_dir if path != export_dir else os.path.dirname(
        os.path.abspath(export_dir))
    try:
        meta = load_metadata(meta_dir)
    except FileNotFoundError:
        return path, meta_dir, None
    if "frontend" in meta:
        # The model learned from this front end's windows; those of another
        # would be embedded without a word otherwise.
        records.check_frontend_params(meta["frontend"], "export %s" % meta_dir,
                                      remedy=remedy)
    return path, meta_dir, meta


def saved_model_path(export_dir):
    """The SavedModel inside an export dir (or export_dir itself if it is one)."""
    inner = os.path.join(export_dir, SAVED_MODEL_SUBDIR)
    if os.path.exists(os.path.join(inner, "saved_model.pb")):
        return inner
    if os.path.exists(os.path.join(export_dir, "saved_model.pb")):
        return export_dir
    raise FileNotFoundError("no SavedModel in %s" % export_dir)
