"""A classifier users can ship: a head on an export's clip embeddings.

The library behind bin/train_classifier. `train_and_export` takes an export
(bin/export) and a labelled corpus and

  1. embeds the corpus with the export (`embed.embed_corpus`, as
     bin/embed: a TFRecord corpus, audio, or a dataset as distributed with
     `input_format`), or reads embeddings bin/embed wrote with it;
  2. scores the head held out, as bin/evaluate --protocol=linear_probe
     does (`linear_probe.linear_probe` with this head alone: cross-validated
     over the dataset's folds, or trained on its train split, the penalty
     chosen on val, scored on eval);
  3. refits the head on every labelled clip, with the penalty the held-out
     parts chose most often (ties: the stronger), features standardised
     with those clips' statistics;
  4. writes export_dir/saved_model, loadable with plain
     `tf.saved_model.load` (the export's SavedModel, front end included, is
     inside it):

       serving_default(waveform: float32 [num_samples], 16 kHz mono)
         -> window_scores float32 [W, C]   the head on each window's
                                           embedding
            clip_scores   float32 [C]      the head on the clip embedding
                                           (the mean of the windows'), as
                                           it was trained
            start_times   float32 [W]      seconds
            clip_embedding float32 [D]
       class_names() -> class_names string [C]

     Scores are softmax probabilities for single-label data, one sigmoid
     per class for multi-label data. Beside it, metadata.json (class names,
     head, task, penalty, the held-out score, the embedding export's
     metadata) and results.json (the held-out evaluation, as bin/evaluate
     writes it).

Fine-tuning the embedding network with the head is not implemented.
"""

import dataclasses
import os
import shutil
import tempfile

from absl import logging
import numpy as np
import tensorflow as tf

from triplet_audio import constants as C
from triplet_audio.config import evaluation as eval_config
from triplet_audio.config import jsonio
from triplet_audio.config import options
from triplet_audio.evaluation import linear_probe
from triplet_audio.serving import embed
from triplet_audio.serving import embeddings_io
from triplet_audio.serving import export

METADATA_NAME = "metadata.json"
RESULTS_NAME = "results.json"
SAVED_MODEL_DIR = "saved_model"


class _ClassifierModule(tf.Module):
    """The shipped model: the export's SavedModel, then the head."""

    def __init__(self, embedder, mean, std, params, task, class_names):
        super().__init__()
        self._embedder = embedder
        self._mean = tf.Variable(mean.astype(np.float32), trainable=False,
                                 name="feature_mean")
        self._std = tf.Variable(std.astype(np.float32), trainable=False,
                                name="feature_std")
        self._params = [tf.Variable(p.astype(np.float32), trainable=False,
                                    name="head_%d" % k)
                        for k, p in enumerate(params)]
        self._single_label = task == linear_probe.SINGLE_LABEL
        self._class_names = tf.Variable(list(class_names), dtype=tf.string,
                                        trainable=False, name="class_names")

    def _head(self, x):
        z = (x - self._mean) / self._std
        if len(self._params) == 4:
            w1, b1, w2, b2 = self._params
            z = tf.nn.relu(tf.matmul(z, w1) + b1)
            w, b = w2, b2
        else:
            w, b = self._params
        logits = tf.matmul(z, w) + b
        return (tf.nn.softmax(logits, axis=-1) if self._single_label
                else tf.sigmoid(logits))

    @tf.function(input_signature=[
        tf.TensorSpec([None], tf.float32, name="waveform")])
    def serving_default(self, waveform):
        out = self._embedder.signatures["serving_default"](waveform=waveform)
        windows = out["window_embeddings"]
        clip = out["clip_embedding"]
        return {"window_scores": self._head(windows),
                "clip_scores": self._head(clip[tf.newaxis])[0],
                "start_times": out["start_times"],
                "clip_embedding": clip}

    @tf.function(input_signature=[])
    def class_names(self):
        return {"class_names": tf.identity(self._class_names)}


def _embeddings(config, input_format, workdir):
    if config.embeddings:
        return embeddings_io.read_embeddings(config.embeddings)
    path = os.path.join(workdir, "embeddings")
    embed.embed_corpus(config.classifier_input, path,
                       saved_model=config.saved_model,
                       input_format=input_format)
    return embeddings_io.read_embeddings(path)


def _chosen_l2(held_out):
    """The penalty the held-out parts chose most often (ties: stronger)."""
    chosen = [p["l2"] for p in held_out["per_part"]]
    return max(set(chosen), key=lambda v: (chosen.count(v), v))


def train_and_export(config, probe_config=None,
                     input_format=options.CSV_FORMAT):
    """Trains a head on an export's embeddings and ships it (module doc).

    Args:
      config: a `config.classifier.ClassifierExportConfig`.
      probe_config: an `EvaluationConfig` for the probe settings (probe_l2,
        probe_max_iter, probe_val_fraction, seed); its probe_classifiers
        are replaced by `config.head`.
      input_format: how `config.classifier_input` is laid out.

    Returns:
      dict: export_dir, saved_model (path), class_names, task, head, l2,
      held_out (the `linear_probe` result).

    Raises:
      FileExistsError: export_dir exists and `config.overwrite` is False.
      linear_probe.ProbeError: the corpus has no test part or < 2 classes.
    """
    probe_config = dataclasses.replace(
        probe_config or eval_config.EvaluationConfig(),
        probe_classifiers=(config.head,), protocol=eval_config.LINEAR_PROBE)
    if os.path.exists(config.export_dir) and os.listdir(config.export_dir):
        if not config.overwrite:
            raise FileExistsError(
                "export_dir: %s exists; pass --overwrite to replace it" %
                config.export_dir)
    meta = export.load_metadata(config.saved_model)
    with tempfile.TemporaryDirectory() as workdir:
        emb_set = _embeddings(config, input_format, workdir)
    held_out = linear_probe.evaluate(emb_set, None, probe_config)
    model_result = held_out[config.head]
    ids, x, labels, _, names = linear_probe.combine_sets(emb_set)
    labelled = labels.sum(axis=1) > 0
    x, labels = x[labelled], labels[labelled]
    l2 = _chosen_l2(model_result)
    task = held_out["task"]
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
    std[std < 1e-8] = 1.0
    z = ((x - mean) / std).astype(np.float32)
    hidden = linear_probe.HIDDEN_UNITS if (
        config.head == linear_probe.MLP) else 0
    target = labels.argmax(axis=1) if task == linear_probe.SINGLE_LABEL else (
        labels)
    params = linear_probe.fit_classifier(
        z, target, task, hidden, l2, probe_config.probe_max_iter,
        probe_config.seed, num_classes=labels.shape[1])
    logging.info("%s head (%s, l2=%g) refit on %d clips; held out: %s "
                 "%.3f +- %.3f", config.head, task, l2, len(ids[labelled]),
                 held_out["metric"], model_result["mean"],
                 model_result["std"])
    embedder = tf.saved_model.load(export.saved_model_path(
        config.saved_model))
    module = _ClassifierModule(embedder, mean, std, params, task,
                               [str(n) for n in names])
    if os.path.exists(config.export_dir):
        shutil.rmtree(config.export_dir)
    saved = os.path.join(config.export_dir, SAVED_MODEL_DIR)
    tf.saved_model.save(module, saved, signatures={
        "serving_default": module.serving_default,
        "class_names": module.class_names})
    metadata = {
        "class_names": [str(n) for n in names],
        "task": task,
        "scores": "softmax" if task == linear_probe.SINGLE_LABEL else
                  "sigmoid",
        "head": config.head,
        "l2": l2,
        "held_out": {"metric": held_out["metric"],
                     "scheme": held_out["scheme"],
                     "mean": model_result["mean"],
                     "std": model_result["std"],
                     "scores": model_result["scores"],
                     "parts": held_out["parts"]},
        "trained_on_clips": int(labelled.sum()),
        "sample_rate": C.SAMPLE_RATE,
        "embedding_export": {
            "path": os.path.abspath(config.saved_model),
            "metadata": meta},
        "signatures": {
            "serving_default": {
                "inputs": {"waveform": "float32 [num_samples], 16 kHz mono"},
                "outputs": {"window_scores": "float32 [W, %d]" % len(names),
                            "clip_scores": "float32 [%d]" % len(names),
                            "start_times": "float32 [W]",
                            "clip_embedding": "float32 [D]"}},
            "class_names": {"outputs": {"class_names": "string [%d]" %
                                        len(names)}}},
    }
    jsonio.write_json(os.path.join(config.export_dir, METADATA_NAME),
                      metadata)
    jsonio.write_json(os.path.join(config.export_dir, RESULTS_NAME),
                      {"linear_probe": held_out, "name": config.head})
    logging.info("classifier written to %s", saved)
    return {"export_dir": config.export_dir, "saved_model": saved,
            "class_names": metadata["class_names"], "task": task,
            "head": config.head, "l2": l2, "held_out": held_out}
