#!/usr/bin/env python3
"""Mutation check: do the tests notice plausible bugs in the core maths?

Applies, one at a time, a list of hand-written mutations (each a plausible
real bug: a flipped hinge, a dot product instead of a cosine, a periodic Hann
window made symmetric, the optimizer left out of the checkpoint, ...) to the
loss (`triplet_audio/model/losses.py`), the sampler maths
(`sampling/samplers.py`), the front end (`features/frontend.py`,
`constants.py`), the evaluation (`evaluation/metrics.py`, `report.py`) and
checkpointing / resume (`training/trainer.py`, `run_dir.py`,
`train_step.py`), runs the tests that should catch each one, and reports the
mutations no test kills (the "survivors").

How it works. The working tree (tracked files and untracked files git does
not ignore: no `.git`, no `.venv`, no ignored outputs) is copied once into a
temporary directory. For each mutation the tool replaces one exact source
snippet (which must occur exactly once in its file, else the tool stops with
an error before running anything), runs

    <repo>/.venv/bin/python -m pytest -x -q -p no:cacheprovider <selection>

in the copy (with the copy first on PYTHONPATH and no bytecode written, so
the mutated source is what gets imported), and restores the file's original
bytes. A mutation is

  * killed    when a selected test fails (or the mutated module no longer
              imports: pytest's collection error);
  * survived  when every selected test passes;
  * timeout   when the selection runs past `--timeout` seconds;
  * error     when none of its test files exist, pytest itself fails
              (usage error, nothing collected), or (with `--baseline`) its
              selection already fails without the mutation.

A selection is a list of pytest invocations (each a string, split like a
shell command line), run in order until one fails. Test files named in a
selection that do not exist (yet) are left out of it and noted.

Usage (from the repository root; the whole list takes ~10 minutes on two
cores, ~15 with --baseline, which first runs every distinct selection on the
unmutated copy so that a selection broken by other work is not mistaken for
kills):

    .venv/bin/python tools/mutation_check.py --baseline \
        --output_md=/tmp/mutations.md --output_json=/tmp/mutations.json
    .venv/bin/python tools/mutation_check.py --list
    .venv/bin/python tools/mutation_check.py --only=loss_hinge_sign,qbe_dot

Exit status: 0 when every mutation was killed (or timed out), 1 when at
least one survived, 2 when the mutation list is invalid (a snippet missing
or ambiguous, duplicate ids) or the copy cannot be set up, 3 when some
mutation ended in "error" and none survived.
"""

import argparse
import dataclasses
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import List

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Files larger than this are not copied (stray outputs, caches).
MAX_COPY_BYTES = 20 * 1024 * 1024

PYTEST_BASE_ARGS = ("-m", "pytest", "-x", "-q", "-p", "no:cacheprovider")

KILLED = "killed"
SURVIVED = "survived"
TIMEOUT = "timeout"
ERROR = "error"

GUARDS = "tests/test_mutation_guards.py"

# ---------------------------------------------------------------------------
# Test selections shared by several mutations.
# ---------------------------------------------------------------------------
_LOSS = ('tests/test_losses.py -k "closed_form or some_pairs or ties or '
         'single_class or anchor_without or random_batches or margin_zero"')
_NOISE = 'tests/test_samplers.py -k "noise or half_normal"'
_TRANSLATION = 'tests/test_samplers.py -k translation'
_MIXING = 'tests/test_samplers.py -k mixing'
_PROXIMITY = 'tests/test_samplers.py -k "proximity or dt"'
_FRONTEND_VALUES = ('tests/test_frontend.py -k "reference or symmetric or '
                    'tone"')
_FRONTEND_FRAMING = ('tests/test_frontend.py -k "counts or framing or '
                     'samples_for or starts or pad_short"')
_CONSTANTS = "tests/test_constants.py tests/numpy_frontend.py"
_QBE = 'tests/test_evaluation.py -k "qbe or cosine or dot"'
_CLASSIFIER = ('tests/test_evaluation.py -k "segment_scores or '
               'classification_map or max"')
_REPORT = 'tests/test_report.py -k "recovery or table1"'
_LR = 'tests/test_training.py -k "learning_rate or schedule or warmup"'
_RESUME = ('tests/test_training.py -k "restore or resume or rerun or '
           'optimizer or checkpoint"')


def _guard(*names):
    """A selection running the named tests of the guard file."""
    return GUARDS + ' -k "' + " or ".join(names) + '"'


# ---------------------------------------------------------------------------
# The mutations. "find" must occur exactly once in "file".
# ---------------------------------------------------------------------------
MUTATIONS = [
    # ----------------------------------------------------------------- loss
    dict(id="loss_hinge_sign", area="loss",
         file="triplet_audio/model/losses.py",
         find="hinge = tf.nn.relu(positive_dist - negative_dist + margin)",
         replace="hinge = tf.nn.relu(negative_dist - positive_dist + margin)",
         why="hinge sign flipped: d(a,n) - d(a,p) rewards collapsing",
         tests=[_LOSS]),
    dict(id="loss_hinge_unclipped", area="loss",
         file="triplet_audio/model/losses.py",
         find="hinge = tf.nn.relu(positive_dist - negative_dist + margin)",
         replace="hinge = positive_dist - negative_dist + margin",
         why="hinge not clipped at 0: easy triplets give negative loss",
         tests=[_LOSS]),
    dict(id="loss_margin_ignored", area="loss",
         file="triplet_audio/model/losses.py",
         find="hinge = tf.nn.relu(positive_dist - negative_dist + margin)",
         replace="hinge = tf.nn.relu(positive_dist - negative_dist)",
         why="margin dropped from the hinge",
         tests=[_LOSS]),
    dict(id="loss_semi_hard_ties", area="loss",
         file="triplet_audio/model/losses.py",
         find="    count = tf.gather(group_count, group)",
         replace="    count = running",
         why="semi-hard as d(a,n) >= d(a,p): tied negatives sorted after "
             "the positive count as semi-hard (sort-order dependent)",
         tests=[_LOSS]),
    dict(id="loss_fallback_hardest", area="loss",
         file="triplet_audio/model/losses.py",
         find="rank = tf.maximum(tf.minimum(count, num_negatives - 1), 0)",
         replace="rank = tf.where(found_semi_hard, count, 0)",
         why="no semi-hard negative: falls back to the closest (hardest) "
             "negative instead of the farthest",
         tests=[_LOSS]),
    dict(id="loss_positive_includes_self", area="loss",
         file="triplet_audio/model/losses.py",
         find="positive = tf.logical_and(same, other)",
         replace="positive = same",
         why="positive mask keeps the diagonal: (a, a) pairs counted",
         tests=[_LOSS]),
    dict(id="loss_distance_swapped", area="loss",
         file="triplet_audio/model/losses.py",
         find='if distance == "euclidean":',
         replace='if distance == "squared":',
         why="squared and non-squared Euclidean distance swapped",
         tests=[_LOSS]),
    dict(id="loss_pairs_without_negative", area="loss",
         file="triplet_audio/model/losses.py",
         find="weight = tf.cast(tf.logical_and(is_pair, has_negative), "
              "tf.float32)",
         replace="weight = tf.cast(is_pair, tf.float32)",
         why="anchors without any negative still counted in the mean",
         tests=[_LOSS]),
    dict(id="loss_mean_over_batch", area="loss",
         file="triplet_audio/model/losses.py",
         find='sums, tf.maximum(sums["num_pairs"], 1.0))',
         replace="sums, tf.cast(tf.maximum(tf.shape(embeddings)[0], 1), "
                 "tf.float32))",
         why="loss divided by the batch size, not the number of counted "
             "anchor-positive pairs",
         tests=[_LOSS]),
    dict(id="keras_loss_no_squeeze", area="loss",
         file="triplet_audio/model/losses.py",
         find="if labels.shape.rank == 2 and labels.shape[-1] == 1:",
         replace="if False:",
         why="Keras wrapper reads [B, 1] class ids as multi-hot: examples "
             "without the class become negatives of each other",
         tests=['tests/test_losses.py -k keras']),
    # ------------------------------------------------------------- samplers
    dict(id="noise_signed_eps", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="abs_eps = sigma * half_normal(tf.shape(logmel), seed)",
         replace="abs_eps = sigma * tf.random.stateless_normal("
                 "tf.shape(logmel), seed)",
         why="noise uses eps instead of |eps|: energy can drop",
         tests=[_NOISE]),
    dict(id="noise_sigma_ignored", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="abs_eps = sigma * half_normal(tf.shape(logmel), seed)",
         replace="abs_eps = half_normal(tf.shape(logmel), seed)",
         why="noise standard deviation sigma ignored (always 1)",
         tests=[_NOISE]),
    dict(id="noise_scales_offset_too", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="    return tf.math.log(_energy_plus_offset(exp_logmel) +\n"
              "                       _energy_from_exp(exp_logmel) * abs_eps)",
         replace="    return logmel + tf.math.log1p(abs_eps)",
         why="noise multiplies exp(log-mel) = energy + LOG_OFFSET, not the "
             "energy: silence gets noise",
         tests=[_NOISE]),
    dict(id="half_normal_radius", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="radius = tf.sqrt(-2.0 * tf.math.log1p(-uniform[0]))",
         replace="radius = tf.sqrt(-tf.math.log1p(-uniform[0]))",
         why="Box-Muller radius without the factor 2: |z| has scale "
             "1/sqrt(2)",
         tests=[_NOISE]),
    dict(id="translation_time_range", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="minval=0, maxval=C.WINDOW_FRAMES,",
         replace="minval=0, maxval=C.WINDOW_FRAMES - 1,",
         why="time shift drawn in [0, T-2]: off by one, T-1 never drawn",
         tests=[_guard("time_shift"), _TRANSLATION]),
    dict(id="translation_freq_range", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="minval=-max_shift, maxval=max_shift + 1,",
         replace="minval=-max_shift, maxval=max_shift,",
         why="frequency shift drawn in [-S, S-1]: +S never drawn",
         tests=[_TRANSLATION]),
    dict(id="translation_fill_zero_logmel", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="constant_values=ZERO_ENERGY_LOGMEL)",
         replace="constant_values=0.0)",
         why="vacated frequency bins filled with log-mel 0 (energy ~1), "
             "not zero energy",
         tests=[_TRANSLATION]),
    dict(id="translation_freq_wraps", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="    source = tf.where((source >= 0) & (source < "
              "C.NUM_MEL_BANDS), source,\n"
              "                      C.NUM_MEL_BANDS)",
         replace="    source = source % C.NUM_MEL_BANDS",
         why="frequency shift is circular (np.roll) instead of truncated",
         tests=[_TRANSLATION]),
    dict(id="translation_freq_direction", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="source = tf.range(C.NUM_MEL_BANDS)[None, :] - freq_shift",
         replace="source = tf.range(C.NUM_MEL_BANDS)[None, :] + freq_shift",
         why="frequency shift applied in the opposite direction",
         tests=[_TRANSLATION]),
    dict(id="translation_time_direction", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="(frames - time_shift) % C.WINDOW_FRAMES",
         replace="(frames + time_shift) % C.WINDOW_FRAMES",
         why="time roll in the opposite direction (documented as np.roll)",
         tests=[_TRANSLATION]),
    dict(id="mixing_ratio_inverted", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="scale = alpha * tf.math.divide_no_nan(total_a, total_n)",
         replace="scale = alpha * tf.math.divide_no_nan(total_n, total_a)",
         why="mixing energy ratio inverted: E(x_n) / E(x_a)",
         tests=[_MIXING]),
    dict(id="mixing_alpha_ignored", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="scale = alpha * tf.math.divide_no_nan(total_a, total_n)",
         replace="scale = tf.math.divide_no_nan(total_a, total_n)",
         why="mixing weight alpha ignored",
         tests=[_MIXING]),
    dict(id="mixing_batch_total", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="total_n = tf.reduce_sum(e_n, axis=[-2, -1], keepdims=True)",
         replace="total_n = tf.reduce_sum(e_n)",
         why="negative energy summed over the whole batch, not per window",
         tests=[_MIXING]),
    dict(id="energy_offset_kept", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="return tf.nn.relu(exp_logmel - (C.LOG_OFFSET + ENERGY_FLOOR))",
         replace="return tf.nn.relu(exp_logmel - ENERGY_FLOOR)",
         why="energy = exp(log-mel): LOG_OFFSET not subtracted",
         tests=['tests/test_samplers.py -k "mixing or noise"']),
    dict(id="proximity_dt_inclusive", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="distance < dt",
         replace="distance <= dt",
         why="(review e) proximity bound |t_i - t_j| <= dt instead of < dt",
         tests=[_PROXIMITY]),
    dict(id="proximity_self_partner", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="tf.logical_not(tf.eye(n, dtype=tf.bool)))",
         replace="tf.ones([n, n], tf.bool))",
         why="a window can be its own proximity partner",
         tests=[_PROXIMITY]),
    dict(id="proximity_nearest_partner", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="score = tf.where(allowed, uniform, -1.0)",
         replace="score = tf.where(allowed, -distance, -math.inf)",
         why="partner is always the nearest window, not uniform within dt",
         tests=[_PROXIMITY]),
    dict(id="proximity_same_recording_valid", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="tf.not_equal(rid[..., 0], rid[..., 1]))",
         replace="tf.ones_like(rid[..., 0], dtype=tf.bool))",
         why="a pair from one recording accepted: negative shares the "
             "anchor's recording",
         tests=[_PROXIMITY]),
    dict(id="proximity_negative_from_anchor", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="NEGATIVE: _pick(pairs[LOGMEL][:, :, 0], n),",
         replace="NEGATIVE: _pick(pairs[LOGMEL][:, :, 0], a),",
         why="proximity negative taken from the anchor's own element",
         tests=[_PROXIMITY]),
    dict(id="augmentation_labels", area="samplers",
         file="triplet_audio/sampling/samplers.py",
         find="LABELS: tf.stack([ids[:, 0], ids[:, 0], ids[:, 1]], axis=1),",
         replace="LABELS: tf.stack([ids[:, 0], ids[:, 1], ids[:, 1]], "
                 "axis=1),",
         why="positive labelled with the negative's window id",
         tests=['tests/test_samplers.py -k augmentation']),
    # ------------------------------------------------------------ front end
    dict(id="mel_upper_8000", area="frontend",
         file="triplet_audio/constants.py",
         find="MEL_UPPER_HZ = 7500.0",
         replace="MEL_UPPER_HZ = 8000",
         why="(review c) mel filterbank upper edge 8000 Hz instead of 7500",
         tests=[_CONSTANTS, _FRONTEND_VALUES]),
    dict(id="log_offset_0001", area="frontend",
         file="triplet_audio/constants.py",
         find="LOG_OFFSET = 0.01",
         replace="LOG_OFFSET = 0.001",
         why="(review d) log(mel + 0.001) instead of log(mel + 0.01)",
         tests=[_CONSTANTS, _FRONTEND_VALUES]),
    dict(id="hop_constant_128", area="frontend",
         file="triplet_audio/constants.py",
         find="STFT_HOP_SAMPLES = 160",
         replace="STFT_HOP_SAMPLES = 128",
         why="STFT hop 8 ms (128 samples) instead of 10 ms",
         tests=[_CONSTANTS, _FRONTEND_FRAMING]),
    dict(id="hann_symmetric", area="frontend",
         file="triplet_audio/features/frontend.py",
         find="window = tf.pad(tf.signal.hann_window(C.STFT_WINDOW_SAMPLES),",
         replace="window = tf.pad(tf.signal.hann_window("
                 "C.STFT_WINDOW_SAMPLES, periodic=False),",
         why="symmetric Hann window instead of periodic",
         tests=[_FRONTEND_VALUES]),
    dict(id="power_spectrum", area="frontend",
         file="triplet_audio/features/frontend.py",
         find="magnitude = tf.sqrt(real * real + imag * imag)",
         replace="magnitude = real * real + imag * imag",
         why="power spectrum instead of STFT magnitude",
         tests=[_FRONTEND_VALUES]),
    dict(id="frontend_hop_128", area="frontend",
         file="triplet_audio/features/frontend.py",
         find="frames = tf.signal.frame(tf.pad(waveform, paddings), "
              "C.FFT_LENGTH,\n"
              "                             C.STFT_HOP_SAMPLES)",
         replace="frames = tf.signal.frame(tf.pad(waveform, paddings), "
                 "C.FFT_LENGTH,\n"
                 "                             C.FFT_LENGTH // 4)",
         why="frame hop FFT_LENGTH // 4 (librosa's default) instead of the "
             "10 ms hop",
         tests=[_FRONTEND_VALUES]),
    dict(id="mel_lower_edge_zero", area="frontend",
         file="triplet_audio/features/frontend.py",
         find="lower_edge_hertz=C.MEL_LOWER_HZ,",
         replace="lower_edge_hertz=0.0,",
         why="mel filterbank lower edge 0 Hz instead of 125 Hz",
         tests=[_FRONTEND_VALUES]),
    dict(id="mel_scale_slaney", area="frontend",
         file="triplet_audio/features/frontend.py",
         find=("            _MEL_MATRIX_F64 = "
               "tf.signal.linear_to_mel_weight_matrix(\n"
               "                num_mel_bins=C.NUM_MEL_BANDS,\n"
               "                num_spectrogram_bins=C.NUM_SPECTROGRAM_BINS,\n"
               "                sample_rate=C.SAMPLE_RATE,\n"
               "                lower_edge_hertz=C.MEL_LOWER_HZ,\n"
               "                upper_edge_hertz=C.MEL_UPPER_HZ,\n"
               "                dtype=tf.float64).numpy()"),
         replace=(
             "            def _slaney(hz):\n"
             "                hz = np.asarray(hz, np.float64)\n"
             "                return np.where(hz < 1000.0, 3.0 * hz / 200.0,"
             " 15.0 + 27.0 * np.log(np.maximum(hz, 1e-9) / 1000.0)"
             " / np.log(6.4))\n"
             "            edges = np.linspace(_slaney(C.MEL_LOWER_HZ),"
             " _slaney(C.MEL_UPPER_HZ), C.NUM_MEL_BANDS + 2)\n"
             "            bins = _slaney(np.linspace(0.0, C.SAMPLE_RATE / 2.0,"
             " C.NUM_SPECTROGRAM_BINS))[:, None]\n"
             "            lower, center, upper = edges[:-2], edges[1:-1],"
             " edges[2:]\n"
             "            _MEL_MATRIX_F64 = np.maximum(0.0, np.minimum("
             "(bins - lower) / (center - lower),"
             " (upper - bins) / (upper - center)))\n"
             "            _MEL_MATRIX_F64[0, :] = 0.0"),
         why="Slaney mel scale (librosa's default) instead of HTK",
         tests=[_FRONTEND_VALUES]),
    dict(id="frame_count_off_by_one", area="frontend",
         file="triplet_audio/features/frontend.py",
         find="frames = 1 + (num_samples - C.STFT_WINDOW_SAMPLES) // "
              "C.STFT_HOP_SAMPLES",
         replace="frames = (num_samples - C.STFT_WINDOW_SAMPLES) // "
                 "C.STFT_HOP_SAMPLES",
         why="frame count 1 + (N - 400) // 160 off by one",
         tests=[_FRONTEND_FRAMING]),
    dict(id="pad_short_to_one_frame", area="frontend",
         file="triplet_audio/features/frontend.py",
         find="missing = tf.maximum(C.MIN_WINDOW_SAMPLES - "
              "tf.shape(waveform)[0], 0)",
         replace="missing = tf.maximum(C.STFT_WINDOW_SAMPLES - "
                 "tf.shape(waveform)[0], 0)",
         why="short clip padded to one STFT frame, not one window: it "
             "yields no window",
         tests=[_FRONTEND_FRAMING]),
    # ----------------------------------------------------------- evaluation
    dict(id="qbe_dot", area="evaluation",
         file="triplet_audio/evaluation/metrics.py",
         find="unit = cosine_normalize(segment_embeddings)",
         replace="unit = np.asarray(segment_embeddings, np.float32)",
         why="(review b) QbE scored by dot product instead of cosine",
         tests=[_QBE, _guard("cosine")]),
    dict(id="cosine_normalize_columns", area="evaluation",
         file="triplet_audio/evaluation/metrics.py",
         find="norms = np.linalg.norm(x, axis=1, keepdims=True)",
         replace="norms = np.linalg.norm(x, axis=0, keepdims=True)",
         why="cosine normalisation of columns (features), not rows",
         tests=[_QBE, _guard("cosine")]),
    dict(id="qbe_self_pairs", area="evaluation",
         file="triplet_audio/evaluation/metrics.py",
         find="first, second = np.triu_indices(is_positive.size, k=1)",
         replace="first, second = np.triu_indices(is_positive.size, k=0)",
         why="QbE pairs include each segment with itself (off by one)",
         tests=[_QBE]),
    dict(id="qbe_negative_pairs_kept", area="evaluation",
         file="triplet_audio/evaluation/metrics.py",
         find="keep = is_positive[first] | is_positive[second]",
         replace="keep = np.ones(first.size, dtype=bool)",
         why="negative-negative pairs kept as irrelevant pairs",
         tests=[_QBE]),
    dict(id="qbe_chance_ratio", area="evaluation",
         file="triplet_audio/evaluation/metrics.py",
         find="chances.append(n_rel / relevant.size)",
         replace="chances.append(n_rel / (relevant.size - n_rel))",
         why="chance = relevant / irrelevant instead of relevant / all",
         tests=[_QBE]),
    dict(id="qbe_auc", area="evaluation",
         file="triplet_audio/evaluation/metrics.py",
         find="per_class[name] = float(metrics.average_precision_score("
              "relevant,",
         replace="per_class[name] = float(metrics.roc_auc_score(relevant,",
         why="ROC AUC instead of average precision",
         tests=[_QBE]),
    dict(id="qbe_sample_with_replacement", area="evaluation",
         file="triplet_audio/evaluation/metrics.py",
         find="pos = rng.choice(pos, size=min(num_pos, pos.size), "
              "replace=False)",
         replace="pos = rng.choice(pos, size=min(num_pos, pos.size), "
                 "replace=True)",
         why="QbE positives sampled with replacement: duplicate segments "
             "make trivially relevant pairs",
         tests=[_QBE]),
    dict(id="classifier_segment_max", area="evaluation",
         file="triplet_audio/evaluation/metrics.py",
         find=("        sums[present] += np.add.reduceat(scores[order], "
               "starts, axis=0,\n"
               "                                         dtype=np.float64)\n"
               "    counts = np.bincount(emb_set.segment_index, "
               "minlength=emb_set.num_segments)\n"
               "    return (sums / counts[:, None]).astype(np.float32)"),
         replace=("        sums[present] = np.maximum(sums[present], "
                  "np.maximum.reduceat(\n"
                  "            scores[order], starts, axis=0))\n"
                  "    return sums.astype(np.float32)"),
         why="segment score = max of window scores instead of the mean",
         tests=[_CLASSIFIER]),
    dict(id="classifier_empty_classes", area="evaluation",
         file="triplet_audio/evaluation/metrics.py",
         find="        if not labels[:, c].any():\n"
              "            excluded.append(name)\n"
              "            continue\n",
         replace="",
         why="classes without a positive eval segment averaged into mAP",
         tests=[_CLASSIFIER]),
    dict(id="feature_stats_ddof1", area="evaluation",
         file="triplet_audio/evaluation/metrics.py",
         find="return mean.astype(np.float32), (sq / x.shape[0])"
              ".astype(np.float32)",
         replace="return mean.astype(np.float32), (sq / (x.shape[0] - 1))"
                 ".astype(np.float32)",
         why="standardisation variance with ddof=1 (differs from the "
             "documented population variance)",
         tests=['tests/test_evaluation.py -k feature_stats']),
    dict(id="fewshot_std_ddof0", area="evaluation",
         file="triplet_audio/evaluation/metrics.py",
         find='"std": float(np.std(maps, ddof=1)) if len(maps) > 1 else 0.0,',
         replace='"std": float(np.std(maps)) if len(maps) > 1 else 0.0,',
         why="few-shot std over draws with ddof=0 instead of the sample std",
         tests=['tests/test_evaluation.py -k "evaluate_runs_every_part"']),
    dict(id="fewshot_not_fresh_first", area="evaluation",
         file="triplet_audio/evaluation/metrics.py",
         find="fresh = np.flatnonzero(labels[:, c] & ~taken)",
         replace="fresh = np.flatnonzero(labels[:, c])",
         why="few-shot draw ignores segments already drawn for earlier "
             "classes (smaller union)",
         tests=['tests/test_evaluation.py -k fewshot']),
    dict(id="recovery_formula", area="evaluation",
         file="triplet_audio/evaluation/report.py",
         find="return (score - baseline) / (topline - baseline)",
         replace="return (score - baseline) / topline",
         why="recovery divided by the topline instead of the gap",
         tests=[_REPORT]),
    dict(id="recovery_wrong_part", area="evaluation",
         file="triplet_audio/evaluation/report.py",
         find="_map_of(results_by_name[top], part))",
         replace="_map_of(results_by_name[top], evaluation.QBE))",
         why="Table 1 recovery uses the QbE topline for every column",
         tests=[_REPORT]),
    # -------------------------------------------------------- training
    dict(id="ckpt_no_optimizer", area="training",
         file="triplet_audio/training/trainer.py",
         find="checkpoint = tf.train.Checkpoint(model=model, "
              "optimizer=optimizer,\n"
              "                                     step=step_var)",
         replace="checkpoint = tf.train.Checkpoint(model=model,\n"
                 "                                     step=step_var)",
         why="(review a) optimizer state (Adam moments, iterations) left "
             "out of the checkpoint",
         tests=[_RESUME]),
    dict(id="ckpt_no_step", area="training",
         file="triplet_audio/training/trainer.py",
         find="checkpoint = tf.train.Checkpoint(model=model, "
              "optimizer=optimizer,\n"
              "                                     step=step_var)",
         replace="checkpoint = tf.train.Checkpoint(model=model, "
                 "optimizer=optimizer)",
         why="step counter not saved: a resumed run restarts at step 0",
         tests=['tests/test_training.py -k "restore_model or rerun_of"']),
    dict(id="resume_start_step_zero", area="training",
         file="triplet_audio/training/trainer.py",
         find="start_step = int(step_var.numpy())",
         replace="start_step = 0",
         why="restored step counter not used: the loop restarts at 0",
         tests=['tests/test_training.py -k "rerun_of or nonfinite"']),
    dict(id="resume_restore_skipped", area="training",
         file="triplet_audio/training/trainer.py",
         find="restored = ckpts.restore()",
         replace="restored = None",
         why="latest checkpoint never restored: rerun starts from scratch",
         tests=['tests/test_training.py -k "rerun_of or nonfinite"']),
    dict(id="ckpt_numbered_by_save", area="training",
         file="triplet_audio/training/run_dir.py",
         find="path = self.manager.save(checkpoint_number=step)",
         replace="path = self.manager.save()",
         why="checkpoints numbered by save count, not by step",
         tests=['tests/test_run_dir.py -k numbered',
                'tests/test_training.py -k nonfinite']),
    dict(id="nonfinite_last_step", area="training",
         file="triplet_audio/training/train_step.py",
         find="tf.logical_and(tf.logical_not(finite), bad_step < 0)",
         replace="tf.logical_not(finite)",
         why="non-finite step overwritten by later ones: reports the last, "
             "not the first",
         tests=['tests/test_training.py -k nonfinite']),
    dict(id="restore_model_no_step", area="training",
         file="triplet_audio/training/run_dir.py",
         find="checkpoint = tf.train.Checkpoint(model=model, step=step)",
         replace="checkpoint = tf.train.Checkpoint(model=model)",
         why="restore_model does not read the step: always reports 0",
         tests=['tests/test_run_dir.py -k "restore or numbered"',
                'tests/test_training.py -k restore_model']),
    dict(id="resume_embedding_size_unlocked", area="training",
         file="triplet_audio/training/run_dir.py",
         find='_RESUME_LOCKED = ("model", "embedding_size", '
              '"mixed_precision")',
         replace='_RESUME_LOCKED = ("model", "mixed_precision")',
         why="resuming with another embedding_size not refused by name",
         tests=['tests/test_run_dir.py -k resume_check',
                'tests/test_training.py -k incompatible']),
    dict(id="lr_warmup_off_by_one", area="training",
         file="triplet_audio/training/trainer.py",
         find="peak * (step + 1) / warm",
         replace="peak * step / warm",
         why="warm-up starts at lr 0 (step 0 takes no step) and peaks late",
         tests=[_guard("warmup_cosine"), _LR]),
    dict(id="lr_cosine_span", area="training",
         file="triplet_audio/training/trainer.py",
         find="span = float(max(self.total_steps - self.warmup_steps, 1))",
         replace="span = float(max(self.total_steps, 1))",
         why="cosine decays over all steps, not steps after warm-up: lr "
             "not 0 at the end",
         tests=[_guard("warmup_cosine"), _LR]),
    dict(id="lr_schedule_flag_ignored", area="training",
         file="triplet_audio/training/trainer.py",
         find='cosine=config.lr_schedule == "cosine")',
         replace="cosine=True)",
         why="--lr_schedule=constant ignored: always cosine decay",
         tests=[_guard("schedule"), _LR]),
]


# ---------------------------------------------------------------------------
# Mutations: validation, application.
# ---------------------------------------------------------------------------


class MutationError(ValueError):
    """The mutation list is invalid (bad fields, missing/ambiguous snippet)."""


@dataclasses.dataclass
class Mutation:
    """One plausible bug.

    Attributes:
      id: unique name.
      area: loss, samplers, frontend, evaluation or training.
      file: path of the mutated file, relative to the repository root.
      find: exact source snippet; must occur exactly once in `file`.
      replace: what replaces it.
      why: one line: the real bug it models.
      tests: pytest invocations (argument strings, shell-split) that should
        kill it, run in order until one fails.
    """

    id: str
    area: str
    file: str
    find: str
    replace: str
    why: str
    tests: List[str]


def load_mutations(entries=None):
    """Builds and checks the `Mutation`s (ids unique, fields well formed).

    Args:
      entries: list of dicts with the fields of `Mutation`; default
        `MUTATIONS`.

    Returns:
      list of `Mutation`.

    Raises:
      MutationError: on a missing or empty field, a duplicate id, a no-op
        replacement or an empty test selection.
    """
    entries = MUTATIONS if entries is None else entries
    names = [f.name for f in dataclasses.fields(Mutation)]
    out, seen = [], set()
    for entry in entries:
        missing = [n for n in names if n not in entry]
        extra = sorted(set(entry) - set(names))
        if missing or extra:
            raise MutationError(
                "mutation %r: missing fields %s, unknown fields %s"
                % (entry.get("id"), missing, extra))
        m = Mutation(**entry)
        for name in ("id", "area", "file", "find", "why"):
            if not isinstance(getattr(m, name), str) or not getattr(m, name):
                raise MutationError("mutation %r: %s must be a non-empty "
                                    "string" % (m.id, name))
        if not re.fullmatch(r"[a-z0-9_]+", m.id):
            raise MutationError("mutation id %r: use [a-z0-9_]" % m.id)
        if m.id in seen:
            raise MutationError("duplicate mutation id %r" % m.id)
        seen.add(m.id)
        if m.find == m.replace:
            raise MutationError("mutation %r: replacement equals the snippet"
                                % m.id)
        if not m.tests or not all(isinstance(t, str) and t.strip()
                                  for t in m.tests):
            raise MutationError("mutation %r: empty test selection" % m.id)
        out.append(m)
    return out


def locate(text, mutation):
    """Offset of the mutation's snippet in `text`.

    Args:
      text: contents of `mutation.file`.
      mutation: a `Mutation`.

    Returns:
      int offset of the only occurrence.

    Raises:
      MutationError: if the snippet occurs zero or several times.
    """
    count = text.count(mutation.find)
    if count != 1:
        raise MutationError(
            "mutation %r: snippet occurs %d times in %s (must be exactly "
            "once):\n%s" % (mutation.id, count, mutation.file, mutation.find))
    return text.index(mutation.find)


def mutated_text(text, mutation):
    """`text` with the mutation's snippet replaced (checked to be unique)."""
    start = locate(text, mutation)
    return (text[:start] + mutation.replace +
            text[start + len(mutation.find):])


def _read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _write_bytes(path, data):
    with open(path, "wb") as f:
        f.write(data)


def apply_mutation(root, mutation):
    """Writes the mutated file under `root`; returns its original bytes.

    Args:
      root: directory holding a copy of the repository.
      mutation: a `Mutation`.

    Returns:
      bytes: the file's contents before the mutation (for `restore`).

    Raises:
      MutationError: if the snippet is missing or ambiguous (the file is
        left untouched).
    """
    path = os.path.join(root, mutation.file)
    original = _read_bytes(path)
    text = original.decode("utf-8")
    _write_bytes(path, mutated_text(text, mutation).encode("utf-8"))
    return original


def restore(root, mutation, original):
    """Writes back the original bytes of the mutated file and checks them."""
    path = os.path.join(root, mutation.file)
    _write_bytes(path, original)
    if _read_bytes(path) != original:
        raise OSError("could not restore %s" % path)


def check_all(root, mutations):
    """Checks every snippet occurs exactly once in its file under `root`.

    Raises:
      MutationError: naming the first bad mutation (or a missing file).
    """
    for m in mutations:
        path = os.path.join(root, m.file)
        if not os.path.isfile(path):
            raise MutationError("mutation %r: no file %s" % (m.id, m.file))
        with open(path, encoding="utf-8") as f:
            locate(f.read(), m)


# ---------------------------------------------------------------------------
# The copy of the working tree.
# ---------------------------------------------------------------------------


def working_tree_files(repo):
    """Relative paths of the files to copy: tracked and untracked, not ignored.

    Uses git (so .git, .venv and ignored outputs are left out); without git,
    walks the tree skipping dot-directories, caches and build outputs.
    """
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others",
             "--exclude-standard"], cwd=repo, check=True,
            capture_output=True).stdout
        names = [n for n in out.decode("utf-8").split("\0") if n]
    except (OSError, subprocess.CalledProcessError):
        names = []
        skip = {"__pycache__", "build", "dist", "runs", "demo_run", "tmp"}
        for dirpath, dirnames, filenames in os.walk(repo):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")
                           and d not in skip and not d.endswith(".egg-info")]
            for name in filenames:
                names.append(os.path.relpath(os.path.join(dirpath, name),
                                             repo))
    return sorted(names)


def copy_working_tree(repo, dest):
    """Copies the working tree of `repo` into `dest`; returns the count."""
    count = 0
    for rel in working_tree_files(repo):
        src = os.path.join(repo, rel)
        # Deleted-but-tracked files, links to elsewhere, large outputs.
        if not os.path.isfile(src) or os.path.islink(src):
            continue
        if os.path.getsize(src) > MAX_COPY_BYTES:
            continue
        target = os.path.join(dest, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copy2(src, target)
        count += 1
    return count


# ---------------------------------------------------------------------------
# Running the tests.
# ---------------------------------------------------------------------------


def path_of(arg):
    """The file part of a pytest path or node id argument, else None."""
    if arg.startswith("-"):
        return None
    path = arg.split("::", 1)[0]
    return path if path.endswith(".py") or "/" in path else None


def selection_runs(root, mutation):
    """The pytest argument lists of a mutation, without missing test files.

    Args:
      root: the copy.
      mutation: a `Mutation`.

    Returns:
      (runs, missing): list of argument lists (invocations left without any
      existing test file are dropped) and the sorted missing paths.
    """
    runs, missing = [], set()
    for selection in mutation.tests:
        args = shlex.split(selection)
        kept, had_path, has_path = [], False, False
        for arg in args:
            path = path_of(arg)
            if path is None:
                kept.append(arg)
                continue
            had_path = True
            if os.path.exists(os.path.join(root, path)):
                kept.append(arg)
                has_path = True
            else:
                missing.add(path)
        if has_path or not had_path:
            runs.append(kept)
    return runs, sorted(missing)


def _test_env(root):
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"]
                                if env.get("PYTHONPATH") else "")
    # A stale .pyc of a previous mutation (same size, same second) must
    # never be imported.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.setdefault("CUDA_VISIBLE_DEVICES", "")
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return env


def _run(command, cwd, env, timeout):
    """Runs `command` in its own process group; kills the group on timeout.

    Returns:
      (returncode or None on timeout, combined output).
    """
    process = subprocess.Popen(command, cwd=cwd, env=env,
                               stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT,
                               start_new_session=True)
    try:
        out, _ = process.communicate(timeout=max(timeout, 1))
        return process.returncode, out.decode("utf-8", "replace")
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        out, _ = process.communicate()
        return None, out.decode("utf-8", "replace")


_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.MULTILINE)


def _first_failure(output):
    match = _FAILED.search(output)
    return match.group(1) if match else ""


def _tail(output, lines=15):
    return "\n".join(output.strip().splitlines()[-lines:])


def run_selection(root, python, mutation, timeout):
    """Runs a mutation's test selection in `root` (already mutated).

    Returns:
      dict with result (killed / survived / timeout / error), detail (the
      killing test, or why), missing (absent test files), commands, tail
      (last output lines when not survived/killed).
    """
    runs, missing = selection_runs(root, mutation)
    info = {"missing": missing, "commands": [], "detail": "", "tail": ""}
    if not runs:
        info.update(result=ERROR, detail="no test file of the selection "
                    "exists: " + ", ".join(missing))
        return info
    env = _test_env(root)
    deadline = time.monotonic() + timeout
    for args in runs:
        command = [python] + list(PYTEST_BASE_ARGS) + args
        info["commands"].append(" ".join(shlex.quote(a) for a in command[1:]))
        code, output = _run(command, root, env, deadline - time.monotonic())
        if code is None:
            info.update(result=TIMEOUT, detail="over %ds" % timeout,
                        tail=_tail(output))
            return info
        if code == 0:
            continue
        if code == 1:
            info.update(result=KILLED, detail=_first_failure(output))
            return info
        if code == 2 and ("ERROR collecting" in output or
                          "Interrupted" in output):
            # The mutated module no longer imports: a kill, but say so.
            info.update(result=KILLED, detail="collection error " +
                        _first_failure(output))
            return info
        info.update(result=ERROR, detail="pytest exit status %d" % code,
                    tail=_tail(output))
        return info
    info.update(result=SURVIVED)
    return info


def run_baseline(root, python, mutations, timeout):
    """Runs every distinct invocation of the mutations on the unmutated copy.

    A selection that already fails without a mutation would report every
    mutation it guards as killed; those invocations are returned so that
    their mutations are reported as errors instead.

    Args:
      root: the (unmutated) copy.
      python: interpreter running pytest.
      mutations: the `Mutation`s to be run.
      timeout: seconds per invocation.

    Returns:
      {invocation (argument tuple): why it fails} for the failing ones.
    """
    seen, broken = [], {}
    for m in mutations:
        for args in selection_runs(root, m)[0]:
            if tuple(args) not in seen:
                seen.append(tuple(args))
    env = _test_env(root)
    for i, args in enumerate(seen, 1):
        start = time.monotonic()
        code, output = _run([python] + list(PYTEST_BASE_ARGS) + list(args),
                            root, env, timeout)
        if code is None:
            why = "baseline over %ds" % timeout
        elif code != 0:
            why = "baseline fails (exit %d) %s" % (code,
                                                  _first_failure(output))
        else:
            why = ""
        if why:
            broken[args] = why
        print("baseline [%2d/%d] %-4s %6.1fs  %s%s" % (
            i, len(seen), "FAIL" if why else "ok", time.monotonic() - start,
            " ".join(shlex.quote(a) for a in args),
            "  (%s)" % why if why else ""), flush=True)
    return broken


# ---------------------------------------------------------------------------
# Reports.
# ---------------------------------------------------------------------------


def _md_cell(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


def markdown_report(results, total_seconds):
    """A Markdown table of the results plus the survivors."""
    lines = ["# Mutation check", "",
             "| id | file | what | result | seconds | detail |",
             "|---|---|---|---|---:|---|"]
    for r in results:
        detail = r["detail"]
        if r["missing"]:
            detail = (detail + "; " if detail else "") + (
                "missing: " + ", ".join(r["missing"]))
        lines.append("| %s | %s | %s | %s | %.1f | %s |" % (
            _md_cell(r["id"]), _md_cell(r["file"]), _md_cell(r["why"]),
            "**%s**" % r["result"] if r["result"] != KILLED else r["result"],
            r["seconds"], _md_cell(detail)))
    counts = summary_counts(results)
    lines += ["", "%d mutations in %.0f s: %s." % (
        len(results), total_seconds,
        ", ".join("%d %s" % (n, k) for k, n in counts.items()))]
    survivors = [r for r in results if r["result"] == SURVIVED]
    if survivors:
        lines += ["", "Survivors:", ""]
        lines += ["* `%s` (%s): %s" % (r["id"], r["file"], r["why"])
                  for r in survivors]
    return "\n".join(lines) + "\n"


def summary_counts(results):
    """{result: count} in a fixed order."""
    return {k: sum(r["result"] == k for r in results)
            for k in (KILLED, SURVIVED, TIMEOUT, ERROR)}


def _print_list(mutations):
    for m in mutations:
        print("%-32s %-11s %-30s %s" % (m.id, m.area, m.file, m.why))
        for t in m.tests:
            print("%32s   tests: %s" % ("", t))
    areas = {}
    for m in mutations:
        areas[m.area] = areas.get(m.area, 0) + 1
    print("%d mutations: %s" % (len(mutations), ", ".join(
        "%s %d" % kv for kv in areas.items())))


# ---------------------------------------------------------------------------
# Main.
# ---------------------------------------------------------------------------


def parse_args(argv):
    """Parses the command line (absl-style --name=value also works)."""
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repo", default=REPO_ROOT,
                        help="repository root (default: this script's)")
    parser.add_argument("--python", default=None,
                        help="interpreter running pytest (default: "
                        "<repo>/.venv/bin/python)")
    parser.add_argument("--only", default="",
                        help="comma-separated mutation ids to run")
    parser.add_argument("--list", action="store_true",
                        help="list the mutations and exit")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds per mutation (all its invocations)")
    parser.add_argument("--output_json", default=None,
                        help="write the results as JSON here")
    parser.add_argument("--output_md", default=None,
                        help="write a Markdown table of the results here")
    parser.add_argument("--baseline", action="store_true",
                        help="first run every distinct test invocation "
                        "unmutated; mutations whose selection already fails "
                        "are reported as errors, not run")
    parser.add_argument("--keep_copy", action="store_true",
                        help="keep the temporary copy (its path is printed)")
    return parser.parse_args(argv)


def _select(mutations, only):
    if not only:
        return mutations
    wanted = [s.strip() for s in only.split(",") if s.strip()]
    known = {m.id for m in mutations}
    unknown = [w for w in wanted if w not in known]
    if unknown:
        raise MutationError("unknown mutation id(s): %s" % ", ".join(unknown))
    return [m for m in mutations if m.id in wanted]


def main(argv=None):
    """Runs the check; returns the exit status (see the module docstring)."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    repo = os.path.abspath(args.repo)
    python = os.path.abspath(
        args.python or os.path.join(repo, ".venv", "bin", "python"))
    try:
        mutations = _select(load_mutations(), args.only)
        if args.list:
            _print_list(mutations)
            return 0
        check_all(repo, mutations)
    except MutationError as e:
        print("mutation_check: %s" % e, file=sys.stderr)
        return 2
    if not os.path.exists(python):
        print("mutation_check: no interpreter %s (run make install)" % python,
              file=sys.stderr)
        return 2

    copy = tempfile.mkdtemp(prefix="mutation_check_")
    results = []
    start_all = time.monotonic()
    try:
        num_files = copy_working_tree(repo, copy)
        try:
            # The copy may differ from what was checked (edits meanwhile).
            check_all(copy, mutations)
        except MutationError as e:
            print("mutation_check: in the copy: %s" % e, file=sys.stderr)
            return 2
        print("copied %d files to %s; %d mutations, timeout %.0fs each" % (
            num_files, copy, len(mutations), args.timeout), flush=True)
        broken = (run_baseline(copy, python, mutations, args.timeout)
                  if args.baseline else {})
        for i, m in enumerate(mutations, 1):
            start = time.monotonic()
            runs, missing = selection_runs(copy, m)
            failing = [broken[tuple(a)] for a in runs if tuple(a) in broken]
            if failing:
                info = {"result": ERROR, "detail": failing[0],
                        "missing": missing, "commands": [], "tail": ""}
            else:
                original = apply_mutation(copy, m)
                try:
                    info = run_selection(copy, python, m, args.timeout)
                finally:
                    restore(copy, m, original)
            seconds = time.monotonic() - start
            record = {"id": m.id, "area": m.area, "file": m.file,
                      "why": m.why, "find": m.find, "replace": m.replace,
                      "tests": m.tests, "seconds": round(seconds, 1)}
            record.update(info)
            results.append(record)
            note = record["detail"]
            if record["missing"]:
                note += " [missing: %s]" % ", ".join(record["missing"])
            print("[%2d/%d] %-8s %6.1fs  %-32s %s" % (
                i, len(mutations), record["result"], seconds, m.id, note),
                flush=True)
            if record["tail"] and record["result"] in (ERROR, TIMEOUT):
                print("    " + record["tail"].replace("\n", "\n    "),
                      flush=True)
    finally:
        if args.keep_copy:
            print("copy kept at %s" % copy)
        else:
            shutil.rmtree(copy, ignore_errors=True)
    total = time.monotonic() - start_all
    counts = summary_counts(results)
    survivors = [r["id"] for r in results if r["result"] == SURVIVED]
    print("summary: %d mutations in %.0fs: %s" % (
        len(results), total,
        ", ".join("%d %s" % (n, k) for k, n in counts.items())))
    print("survivors (%d): %s" % (len(survivors),
                                  ", ".join(survivors) or "none"))
    if args.output_json:
        with open(args.output_json, "w") as f:
            json.dump({"seconds": round(total, 1), "counts": counts,
                       "survivors": survivors, "results": results}, f,
                      indent=2)
    if args.output_md:
        with open(args.output_md, "w") as f:
            f.write(markdown_report(results, total))
    if survivors:
        return 1
    return 3 if counts[ERROR] else 0


if __name__ == "__main__":
    sys.exit(main())
