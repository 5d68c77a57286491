"""Results files, the paper's tables, plots and projector files.

One evaluation run (`write_run_report`, what `bin/evaluate` calls through
`evaluate_to_dir`) writes into its output directory:

  results.json           everything `metrics.evaluate` returned, plus name
                         (and "linear_probe", `linear_probe.evaluate`'s,
                         with --protocol=linear_probe or both)
  report.md              Table 1 / Table 2 rows of this representation,
                         and the linear probe's table
  per_class_ap.png       per-class AP bars of each part
  projection.png         2-D PCA of eval segment embeddings, coloured by
                         (first) class
  projector/vectors.tsv  segment embeddings for the TensorBoard projector
  projector/metadata.tsv segment id and label names, one row per vector

A comparison across runs (`write_comparison_report`) reads several
results.json files and writes Table 1 with recovery of the baseline-to-topline
gap, Table 2 (few-shot mean +- std) and per-class AP bars per
representation.
"""

import dataclasses
import math
import os

from absl import logging
import matplotlib
from matplotlib import figure
import numpy as np

from triplet_audio.config import jsonio
from triplet_audio.serving import embeddings_io
from triplet_audio.config import evaluation as eval_config
from triplet_audio.evaluation import linear_probe
from triplet_audio.evaluation import metrics

RESULTS_NAME = "results.json"
REPORT_NAME = "report.md"
PER_CLASS_PLOT_NAME = "per_class_ap.png"
PROJECTION_PLOT_NAME = "projection.png"
PROJECTOR_DIR = "projector"
VECTORS_TSV = "vectors.tsv"
METADATA_TSV = "metadata.tsv"

TABLE1_PARTS = ((metrics.QBE, "QbE retrieval"),
                (metrics.CLASSIFIER_1X512, "Classification 1x512"),
                (metrics.CLASSIFIER_2X512, "Classification 2x512"))
_MISSING = "n/a"


def recovery(score, baseline, topline):
    """Share of the baseline-to-topline gap a representation recovers.

    Args:
      score: the representation's mAP.
      baseline: the baseline's (log-mel) mAP.
      topline: the topline's (supervised triplets) mAP.

    Returns:
      (score - baseline) / (topline - baseline); NaN when any value is missing
      or the gap is zero.
    """
    if any(v is None or not math.isfinite(v)
           for v in (score, baseline, topline)):
        return float("nan")
    if topline == baseline:
        return float("nan")
    return (score - baseline) / (topline - baseline)


def write_results_json(results, path):
    """Writes `results` as strict JSON (NaN -> null), atomically.

    `jsonio.write_json` is the one writer: NumPy values unwrapped, tuples as
    lists, NaN as null (strict JSON; jq and browsers reject NaN), written to
    a temporary name and renamed.

    Args:
      results: the dict `metrics.evaluate` returned (plus "name").
      path: output file.
    """
    jsonio.write_json(path, results)


def load_results(paths):
    """Reads results.json files into {name: results}, in the given order.

    Args:
      paths: results.json files or run directories holding one.

    Returns:
      Dict name -> results; the name is the run's "name" (else its
      directory's name); duplicates get a "#2", "#3" suffix.
    """
    out = {}
    for path in paths:
        if os.path.isdir(path):
            path = os.path.join(path, RESULTS_NAME)
        results = jsonio.read_json(path)
        name = results.get("name") or os.path.basename(
            os.path.dirname(os.path.abspath(path)))
        unique, k = name, 1
        while unique in out:
            k += 1
            unique = "%s#%d" % (name, k)
        out[unique] = results
    return out


def _map_of(results, part):
    value = (results.get(part) or {}).get("map")
    return None if value is None else float(value)


def _fmt_map(value):
    if value is None or not math.isfinite(value):
        return _MISSING
    return "%.3f" % value


def _fmt_recovery(value):
    if value is None or not math.isfinite(value):
        return _MISSING
    return "%.0f%%" % (100.0 * value)


def _md_escape(text):
    return str(text).replace("|", "\\|")


def _find_row(results_by_name, key):
    """Name of the run called `key`, else of the one whose representation is."""
    if key is None:
        return None
    if key in results_by_name:
        return key
    for name, results in results_by_name.items():
        if results.get("representation") == key:
            return name
    return None


def _ordered_names(results_by_name, baseline_name, topline_name):
    """Paper order: topline, baseline, then the rest as given."""
    names = [n for n in (topline_name, baseline_name) if n is not None]
    return names + [n for n in results_by_name if n not in names]


def build_table1(results_by_name, baseline="logmel", topline=None):
    """Markdown of the paper's Table 1.

    Rows are representations (topline first, then baseline, then the rest);
    columns are QbE / 1x512 / 2x512 mAP and recovery.

    Args:
      results_by_name: {name: results dict}.
      baseline: name (or representation) of the baseline row; recovery is
        "n/a" where it is absent.
      topline: name (or representation) of the topline row; None (or absent)
        leaves recovery "n/a".

    Returns:
      The table as a Markdown string (ending in a newline).
    """
    header = ["Representation"]
    for _, title in TABLE1_PARTS:
        header += ["%s mAP" % title, "%s recovery" % title]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "---|" * len(header)]
    for row in table1_rows(results_by_name, baseline, topline):
        label = _md_escape(row["name"])
        if row["role"]:
            label += " (%s)" % row["role"]
        cells = [label]
        for part, _ in TABLE1_PARTS:
            cells += [_fmt_map(row[part]["map"]),
                      _fmt_recovery(row[part]["recovery"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def table1_rows(results_by_name, baseline="logmel", topline=None):
    """Table 1 as data (what `build_table1` renders), for report.json.

    Args:
      results_by_name: {name: results dict}.
      baseline: see `build_table1`.
      topline: see `build_table1`.

    Returns:
      list, in the table's row order, of {"name", "role" ("topline",
      "baseline" or None), and per Table 1 part {"map", "recovery"}} (NaN
      where missing or undefined).
    """
    base = _find_row(results_by_name, baseline)
    top = _find_row(results_by_name, topline)
    rows = []
    for name in _ordered_names(results_by_name, base, top):
        row = {"name": name, "role": ("topline" if name == top else
                                      "baseline" if name == base else None)}
        for part, _ in TABLE1_PARTS:
            score = _map_of(results_by_name[name], part)
            rec = float("nan")
            if base is not None and top is not None:
                rec = recovery(score, _map_of(results_by_name[base], part),
                               _map_of(results_by_name[top], part))
            row[part] = {"map": float("nan") if score is None else score,
                         "recovery": rec}
        rows.append(row)
    return rows


def build_table2(results_by_name):
    """Markdown of the paper's Table 2: few-shot mAP, mean +- std over draws.

    Args:
      results_by_name: {name: results dict}; runs without few-shot results
        are left out.

    Returns:
      The table as a Markdown string (ending in a newline).
    """
    lines = ["| Representation | Model architecture | Draws | mAP |",
             "|---|---|---|---|"]
    for name, results in results_by_name.items():
        few = results.get(metrics.FEWSHOT)
        if not few:
            continue
        mean, std = few.get("map"), few.get("std")
        value = _fmt_map(mean)
        if value != _MISSING and std is not None:
            value += " ± %.3f" % std
        lines.append("| %s | Fully connected (%s) | %d | %s |" % (
            _md_escape(name), few.get("architecture", _MISSING),
            len(few.get("maps", [])), value))
    return "\n".join(lines) + "\n"


def build_markdown(results_by_name, baseline="logmel", topline=None):
    """Both tables with headings and the QbE chance level.

    Args:
      results_by_name: {name: results dict}.
      baseline: see `build_table1`.
      topline: see `build_table1`.

    Returns:
      Markdown string.
    """
    chances = sorted({round(r[metrics.QBE]["chance"], 3)
                      for r in results_by_name.values()
                      if (r.get(metrics.QBE) or {}).get("chance")
                      is not None})
    parts = ["# Evaluation", "",
             "## Table 1: retrieval and classification mAP", "",
             build_table1(results_by_name, baseline, topline)]
    if chances:
        parts.append("QbE chance level: %s.\n" % ", ".join(
            "%.3f" % c for c in chances))
    parts += ["## Table 2: few-shot classification mAP", "",
              build_table2(results_by_name)]
    return "\n".join(parts)


def plot_per_class_ap(results_by_name, path,
                      parts=(metrics.QBE, metrics.CLASSIFIER_1X512,
                             metrics.CLASSIFIER_2X512,
                             metrics.FEWSHOT)):
    """Per-class AP bars, one colour per representation, one panel per part.

    Args:
      results_by_name: {name: results dict} (with "per_class" entries).
      path: output PNG.
      parts: result keys to plot; those no run has are left out.

    Returns:
      `path`, or None when no run has per-class results.
    """
    panels = [p for p in parts if any(
        (r.get(p) or {}).get("per_class") for r in results_by_name.values())]
    if not panels:
        logging.warning("No per-class results to plot for %s", path)
        return None
    classes = []
    for results in results_by_name.values():
        for part in panels:
            for name in (results.get(part) or {}).get("per_class", {}):
                if name not in classes:
                    classes.append(name)
    names = list(results_by_name)
    width = 0.8 / len(names)
    fig_w = min(max(6.0, 0.25 * len(classes) * max(1, len(names) / 2)), 60.0)
    fig = figure.Figure(figsize=(fig_w, 2.8 * len(panels)))
    axes = fig.subplots(len(panels), 1, squeeze=False)
    x = np.arange(len(classes))
    for ax, part in zip(axes[:, 0], panels):
        for k, name in enumerate(names):
            per_class = (results_by_name[name].get(part) or {}).get(
                "per_class", {})
            values = [per_class.get(c, np.nan) for c in classes]
            values = [np.nan if v is None else v for v in values]
            ax.bar(x + (k - (len(names) - 1) / 2) * width, values, width,
                   label=name)
        ax.set_ylabel("AP")
        ax.set_ylim(0, 1)
        ax.set_title(part)
        ax.set_xticks(x)
        ax.set_xticklabels(classes, rotation=90, fontsize=6)
        if len(names) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    _save(fig, path)
    return path


def pca_2d(x):
    """First two principal components of the rows of `x` (numpy SVD).

    Args:
      x: [M, D] array.

    Returns:
      float32 [M, 2] projections (zero columns where rank is lower).
    """
    x = np.asarray(x, dtype=np.float64)
    centered = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centered, full_matrices=False)
    out = np.zeros((x.shape[0], 2))
    k = min(2, vt.shape[0])
    out[:, :k] = centered @ vt[:k].T
    return out.astype(np.float32)


def _subsample(num, max_points, seed):
    if num <= max_points:
        return np.arange(num)
    return np.sort(np.random.default_rng(seed).choice(num, max_points,
                                                      replace=False))


def first_class_names(labels, class_names):
    """Name of each segment's first (lowest-index) class, "" if unlabelled."""
    labels = np.asarray(labels).astype(bool)
    first = np.argmax(labels, axis=1)
    return [str(class_names[f]) if labels[i, f] else ""
            for i, f in enumerate(first)]


def plot_projection(segment_embeddings, labels, class_names, path,
                    max_points=3000, seed=0, title=None):
    """Scatter of a 2-D PCA of segment embeddings, coloured by first class.

    Args:
      segment_embeddings: [S, D] array.
      labels: multi-hot [S, C] labels.
      class_names: [C] names.
      path: output PNG.
      max_points: segments plotted at most (seeded subsample).
      seed: seed of the subsample.
      title: optional plot title.

    Returns:
      `path`.
    """
    rows = _subsample(len(segment_embeddings), max_points, seed)
    xy = pca_2d(np.asarray(segment_embeddings)[rows])
    first = np.array(first_class_names(np.asarray(labels)[rows], class_names))
    classes = sorted(set(first.tolist()))
    fig = figure.Figure(figsize=(7, 6))
    ax = fig.subplots()
    with_legend = len(classes) <= 20
    cmap = matplotlib.colormaps[
        "tab10" if len(classes) <= 10 else
        "tab20" if with_legend else "nipy_spectral"]
    for i, name in enumerate(classes):
        mask = first == name
        # One scatter per class keeps legend colours and point colours equal.
        colour = cmap(i) if with_legend else cmap(i / max(1, len(classes) - 1))
        ax.scatter(xy[mask, 0], xy[mask, 1], s=6, color=colour,
                   label=name or "(none)")
    if with_legend:
        ax.legend(fontsize=6, loc="best", markerscale=2)
    ax.set_xlabel("PC 1")
    ax.set_ylabel("PC 2")
    ax.set_title(title or "Segment embeddings (PCA), coloured by first class")
    fig.tight_layout()
    _save(fig, path)
    return path


def _save(fig, path):
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    # A bare Figure renders with Agg and never touches pyplot's global
    # backend or figure registry (safe inside notebooks and threads).
    fig.savefig(path, dpi=100)


def _tsv_field(text):
    # Tabs and newlines would break the row structure the projector parses.
    return str(text).replace("\t", " ").replace("\n", " ")


def write_projector_files(output_dir, segment_embeddings, segment_ids, labels,
                          class_names, max_points=10000, seed=0):
    """TensorBoard projector TSVs: vectors.tsv and metadata.tsv.

    Load them at projector.tensorflow.org ("Load") or point a projector
    config at them.

    Args:
      output_dir: directory for the two files.
      segment_embeddings: [S, D] array.
      segment_ids: [S] ids.
      labels: multi-hot [S, C] labels.
      class_names: [C] names.
      max_points: rows written at most (seeded subsample).
      seed: seed of the subsample.

    Returns:
      (vectors_path, metadata_path).
    """
    os.makedirs(output_dir, exist_ok=True)
    rows = _subsample(len(segment_embeddings), max_points, seed)
    vectors = np.asarray(segment_embeddings, dtype=np.float32)[rows]
    labels = np.asarray(labels).astype(bool)[rows]
    first = first_class_names(labels, class_names)
    vectors_path = os.path.join(output_dir, VECTORS_TSV)
    metadata_path = os.path.join(output_dir, METADATA_TSV)
    np.savetxt(vectors_path, vectors, delimiter="\t", fmt="%.6g")
    with open(metadata_path, "w") as f:
        # A header row is required by the projector when there are several
        # metadata columns.
        f.write("segment_id\tfirst_label\tlabels\n")
        for r, row_labels, first_label in zip(rows, labels, first):
            names = ";".join(str(class_names[c])
                             for c in np.flatnonzero(row_labels))
            f.write("%s\t%s\t%s\n" % (_tsv_field(segment_ids[r]),
                                      _tsv_field(first_label),
                                      _tsv_field(names)))
    return vectors_path, metadata_path


def write_run_report(results, output_dir, eval_set=None):
    """Writes one run's results.json, report.md, plots and projector files.

    Args:
      results: `metrics.evaluate` output (with an optional "name").
      output_dir: the run's output directory.
      eval_set: optional eval `EmbeddingSet`, for the projection plot and
        projector files.

    Returns:
      Dict of what was written: {"results", "report", "per_class_plot",
      "projection_plot", "vectors", "metadata"} (absent entries not written).
    """
    os.makedirs(output_dir, exist_ok=True)
    name = results.get("name") or results.get("representation", "run")
    written = {"results": os.path.join(output_dir, RESULTS_NAME),
               "report": os.path.join(output_dir, REPORT_NAME)}
    write_results_json(results, written["results"])
    with open(written["report"], "w") as f:
        paper = any(part in results for part in metrics.ALL_PARTS)
        if paper:
            f.write(build_markdown({name: results}, baseline=None))
        if results.get(linear_probe.LINEAR_PROBE):
            f.write(("\n" if paper else "# Evaluation\n\n") +
                    linear_probe.markdown(results[linear_probe.LINEAR_PROBE],
                                          name))
    plot = plot_per_class_ap({name: results},
                             os.path.join(output_dir, PER_CLASS_PLOT_NAME))
    if plot:
        written["per_class_plot"] = plot
    if eval_set is not None:
        means = embeddings_io.segment_means(eval_set)
        written["projection_plot"] = plot_projection(
            means, eval_set.labels, eval_set.class_names,
            os.path.join(output_dir, PROJECTION_PLOT_NAME),
            title="%s: eval segments (PCA)" % name)
        written["vectors"], written["metadata"] = write_projector_files(
            os.path.join(output_dir, PROJECTOR_DIR), means,
            eval_set.segment_ids, eval_set.labels, eval_set.class_names)
    logging.info("Wrote %s", ", ".join(sorted(written.values())))
    return written


def write_comparison_report(results_paths, output_dir, baseline="logmel",
                            topline=None):
    """Table 1 (with recovery), Table 2 and per-class plots across runs.

    Args:
      results_paths: results.json files or run directories.
      output_dir: where report.md and per_class_ap.png go.
      baseline: name or representation of the baseline run.
      topline: name or representation of the topline run.

    Returns:
      Dict {"report", "per_class_plot"} of the paths written.
    """
    results_by_name = load_results(results_paths)
    os.makedirs(output_dir, exist_ok=True)
    written = {"report": os.path.join(output_dir, REPORT_NAME)}
    with open(written["report"], "w") as f:
        f.write(build_markdown(results_by_name, baseline, topline))
    plot = plot_per_class_ap(results_by_name,
                             os.path.join(output_dir, PER_CLASS_PLOT_NAME))
    if plot:
        written["per_class_plot"] = plot
    return written


def evaluate_to_dir(train_path, eval_path, output_dir, name=None, config=None):
    """What `bin/evaluate` does: read, evaluate, write the run's report.

    `config.protocol` says which evaluations run: the paper's parts
    (`metrics.evaluate`), the linear probe (`linear_probe.evaluate`, on the
    clips of both sets, or of the train set alone when `eval_path` is None
    or names the same files), or both.

    Args:
      train_path: file, glob or directory of the train embeddings.
      eval_path: file, glob or directory of the held-out embeddings (None:
        the linear probe alone, on the train embeddings).
      output_dir: where results.json, report.md, plots and projector files
        go.
      name: row name in the tables; defaults to the representation.
      config: an `metrics.EvaluationConfig`; defaults to the paper's.

    Returns:
      The results dict (also written to output_dir/results.json).
    """
    config = config or metrics.EvaluationConfig()
    train_set = embeddings_io.read_embeddings(train_path)
    if eval_path is None:
        if config.protocol != eval_config.LINEAR_PROBE:
            raise ValueError("eval: required by --protocol=%s" %
                             config.protocol)
        eval_set = train_set
    elif config.protocol == eval_config.LINEAR_PROBE and (
            embeddings_io.resolve_paths(eval_path) ==
            embeddings_io.resolve_paths(train_path)):
        eval_set = train_set  # One file holding the whole dataset.
    else:
        eval_set = embeddings_io.read_embeddings(eval_path)
    if config.protocol == eval_config.LINEAR_PROBE:
        results = {"representation": train_set.representation,
                   "config": dataclasses.asdict(config)}
        results["config"]["parts"] = []
    else:
        results = metrics.evaluate(train_set, eval_set, config)
    if config.protocol != eval_config.PAPER_PROTOCOL:
        results[linear_probe.LINEAR_PROBE] = linear_probe.evaluate(
            train_set, eval_set, config)
    results["protocol"] = config.protocol
    results["name"] = name or eval_set.representation
    write_run_report(results, output_dir, eval_set=eval_set)
    return results
