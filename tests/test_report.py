"""Tests of results files, tables, plots and projector files (report.py)."""

import json
import os

import numpy as np
import pytest

from triplet_audio.serving import embeddings_io as eio
from triplet_audio.evaluation import metrics as ev
from triplet_audio.evaluation import report

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def fake_results(name, qbe, c1, c2, few=None, few_std=0.01,
                 representation=None, classes=("dog", "rain")):
    """A results dict shaped like `evaluation.evaluate`'s, values given."""
    rng = np.random.default_rng(abs(hash(name)) % 2**32)

    def part(value):
        return {"map": value,
                "per_class": {c: float(rng.random()) for c in classes}}

    results = {"name": name, "representation": representation or name,
               ev.QBE: dict(part(qbe), chance=0.3311, skipped=[]),
               ev.CLASSIFIER_1X512: part(c1), ev.CLASSIFIER_2X512: part(c2),
               "timings": {"qbe": 0.5}}
    if few is not None:
        results[ev.FEWSHOT] = dict(part(few), std=few_std,
                                   maps=[few - few_std, few, few + few_std],
                                   architecture="1x512")
    return results


def table_rows(markdown):
    """{first cell: [other cells]} of the first Markdown table in `markdown`."""
    rows = {}
    for line in markdown.splitlines():
        if line.startswith("| ") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split(" | ")]
            rows[cells[0]] = cells[1:]
    return rows


def test_recovery_formula():
    assert report.recovery(0.562, 0.423, 0.790) == pytest.approx(
        (0.562 - 0.423) / (0.790 - 0.423))
    assert report.recovery(0.423, 0.423, 0.790) == 0.0
    assert report.recovery(0.790, 0.423, 0.790) == 1.0
    assert report.recovery(0.3, 0.4, 0.6) == pytest.approx(-0.5)
    assert np.isnan(report.recovery(0.5, 0.4, 0.4))
    assert np.isnan(report.recovery(None, 0.4, 0.6))


def test_table1_numbers_match_results():
    runs = {
        "proximity": fake_results("proximity", 0.562, 0.226, 0.241),
        "logmel": fake_results("logmel", 0.423, 0.065, 0.102),
        "supervised": fake_results("supervised", 0.790, 0.288, 0.289),
    }
    markdown = report.build_table1(runs, baseline="logmel",
                                   topline="supervised")
    rows = table_rows(markdown)
    names = list(rows)
    # Paper order: header, topline, baseline, then the rest.
    assert names[1:] == ["supervised (topline)", "logmel (baseline)",
                         "proximity"]
    for label, name in (("supervised (topline)", "supervised"),
                        ("logmel (baseline)", "logmel"),
                        ("proximity", "proximity")):
        cells = rows[label]
        for k, part in enumerate((ev.QBE, ev.CLASSIFIER_1X512,
                                  ev.CLASSIFIER_2X512)):
            value = runs[name][part]["map"]
            assert cells[2 * k] == "%.3f" % value
            rec = report.recovery(value, runs["logmel"][part]["map"],
                                  runs["supervised"][part]["map"])
            assert cells[2 * k + 1] == "%.0f%%" % (100 * rec)
    assert rows["supervised (topline)"][1] == "100%"
    assert rows["logmel (baseline)"][1] == "0%"
    # Without a topline there is no recovery to show.
    rows = table_rows(report.build_table1(runs, baseline="logmel"))
    assert rows["proximity"][1] == "n/a"


def test_table1_finds_baseline_by_representation():
    runs = {"my baseline run": fake_results("b", 0.4, 0.1, 0.1,
                                            representation="logmel"),
            "top": fake_results("top", 0.8, 0.3, 0.3),
            "x": fake_results("x", 0.6, 0.2, 0.2)}
    rows = table_rows(report.build_table1(runs, baseline="logmel",
                                          topline="top"))
    assert rows["x"][1] == "50%"
    assert "my baseline run (baseline)" in rows


def test_table2_mean_and_std():
    runs = {"joint": fake_results("joint", 0.5, 0.2, 0.2, few=0.143,
                                  few_std=0.004),
            "no_fewshot": fake_results("n", 0.5, 0.2, 0.2)}
    rows = table_rows(report.build_table2(runs))
    assert rows["joint"] == ["Fully connected (1x512)", "3", "0.143 ± 0.004"]
    assert "no_fewshot" not in rows


def test_results_json_is_strict(tmp_path):
    results = fake_results("r", float("nan"), 0.1, 0.2)
    results["counts"] = {"n": np.int64(3), "x": np.float32(0.5)}
    path = str(tmp_path / "results.json")
    report.write_results_json(results, path)
    with open(path) as f:
        text = f.read()
    assert "NaN" not in text
    loaded = json.loads(text)
    assert loaded["qbe"]["map"] is None and loaded["counts"]["n"] == 3


def _small_eval_set():
    rng = np.random.default_rng(0)
    labels = (rng.random((60, 3)) < 0.4).astype(np.uint8)
    labels[0] = 0  # An unlabelled segment.
    segment_index = np.repeat(np.arange(60), 2)
    return eio.EmbeddingSet(
        embeddings=rng.normal(size=(120, 6)).astype(np.float32),
        segment_index=segment_index, start_times=np.zeros(120),
        segment_ids=["seg\t%d" % i if i == 5 else "seg%d" % i
                     for i in range(60)],
        labels=labels, split=[""] * 60, class_names=["dog", "rain", "speech"],
        representation="toy")


def _assert_png(path):
    assert os.path.getsize(path) > 1000
    with open(path, "rb") as f:
        assert f.read(8) == _PNG_MAGIC


def test_run_report_writes_every_file(tmp_path):
    eval_set = _small_eval_set()
    results = fake_results("toy", 0.41, 0.12, 0.15, few=0.08,
                           classes=("dog", "rain", "speech"))
    written = report.write_run_report(results, str(tmp_path), eval_set)
    with open(written["results"]) as f:
        assert json.load(f) == results
    with open(written["report"]) as f:
        markdown = f.read()
    table1, table2 = markdown.split("## Table 2")
    assert table_rows(table1)["toy"][0::2] == ["0.410", "0.120", "0.150"]
    assert table_rows(table2)["toy"][-1] == "0.080 ± 0.010"
    _assert_png(written["per_class_plot"])
    _assert_png(written["projection_plot"])
    vectors = np.loadtxt(written["vectors"], delimiter="\t")
    np.testing.assert_allclose(vectors, eio.segment_means(eval_set),
                               rtol=1e-5, atol=1e-6)
    with open(written["metadata"]) as f:
        lines = f.read().splitlines()
    assert lines[0] == "segment_id\tfirst_label\tlabels"
    assert len(lines) == 61
    assert all(len(line.split("\t")) == 3 for line in lines)
    for line, labels in zip(lines[1:], eval_set.labels):
        names = [n for n, on in zip(eval_set.class_names, labels) if on]
        assert line.split("\t")[2] == ";".join(names)
        assert line.split("\t")[1] == (names[0] if names else "")


def test_pca_recovers_dominant_direction():
    rng = np.random.default_rng(0)
    direction = np.array([3.0, 4.0, 0.0]) / 5.0
    x = np.outer(rng.normal(size=200) * 10, direction) + 0.01 * rng.normal(
        size=(200, 3))
    xy = report.pca_2d(x)
    centered = x - x.mean(0)
    assert abs(np.corrcoef(xy[:, 0], centered @ direction)[0, 1]) > 0.999


def test_comparison_report_from_results_files(tmp_path):
    runs = {"logmel": fake_results("logmel", 0.423, 0.065, 0.102, few=0.032),
            "supervised": fake_results("supervised", 0.79, 0.288, 0.289),
            "joint": fake_results("joint", 0.575, 0.244, 0.259, few=0.143)}
    dirs = []
    for name, results in runs.items():
        report.write_results_json(results,
                                  str(tmp_path / name / "results.json"))
        dirs.append(str(tmp_path / name))
    written = report.write_comparison_report(
        dirs, str(tmp_path / "cmp"), baseline="logmel", topline="supervised")
    with open(written["report"]) as f:
        markdown = f.read()
    table1, table2 = markdown.split("## Table 2")
    rows = table_rows(table1)
    joint_qbe = report.recovery(0.575, 0.423, 0.79)
    assert rows["joint"][:2] == ["0.575", "%.0f%%" % (100 * joint_qbe)]
    assert rows["logmel (baseline)"][0] == "0.423"
    assert set(table_rows(table2)) == {"Representation", "logmel", "joint"}
    _assert_png(written["per_class_plot"])


def test_evaluate_to_dir_end_to_end(tmp_path):
    rng = np.random.default_rng(0)
    sets = []
    for k, prefix in enumerate(("train", "eval")):
        labels = (rng.random((120, 2)) < 0.5).astype(np.uint8)
        segment_index = np.repeat(np.arange(120), 2)
        emb = (2.0 * labels[segment_index] @ rng.normal(size=(2, 8)) +
               rng.normal(size=(240, 8)))
        sets.append(eio.EmbeddingSet(
            emb.astype(np.float16), segment_index, np.zeros(240),
            ["%s%d" % (prefix, i) for i in range(120)], labels, [prefix] * 120,
            ["a", "b"], "logmel"))
        eio.write_embeddings(str(tmp_path / prefix), sets[-1],
                             num_shards=1 + k)
    config = ev.EvaluationConfig(parts=("qbe", "fewshot"), qbe_num_pos=20,
                                 qbe_num_neg=20, fewshot_per_class=5,
                                 fewshot_draws=1, fewshot_epochs=2,
                                 hidden_units=8)
    out = str(tmp_path / "run")
    results = report.evaluate_to_dir(str(tmp_path / "train.npz"),
                                     str(tmp_path / "eval.npz"), out,
                                     config=config)
    with open(os.path.join(out, "results.json")) as f:
        saved = json.load(f)
    assert saved["name"] == "logmel"
    assert saved["qbe"]["map"] == pytest.approx(results["qbe"]["map"])
    assert saved["qbe"]["map"] > saved["qbe"]["chance"]
    # Log-mel gets the paper's 4x512-shaped few-shot net.
    assert saved["fewshot"]["architecture"] == "4x8"
    assert saved["counts"]["eval"]["dtype"] == "float16"
    for name in ("report.md", "per_class_ap.png", "projection.png",
                 "projector/vectors.tsv", "projector/metadata.tsv"):
        assert os.path.getsize(os.path.join(out, name)) > 0
