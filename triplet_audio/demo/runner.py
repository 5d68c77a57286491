"""The one-command demo: the whole path on the synthetic corpus, to Table 1.

`run_demo(config)` runs the binaries a user runs, as subprocesses
(`sys.executable bin/NAME ...`, through `demo.stages`), and puts everything in
one run directory:

  corpus                    bin/make_corpus (labelled synthetic scenes)
  features_{train,eval}     bin/extract_features
  embed_logmel_{train,eval} bin/embed --representation=logmel (the baseline)
  evaluate_logmel           bin/evaluate
  for each training run S (supervised topline first, then the samplers):
    train_S, export_S, embed_S_train, embed_S_eval, evaluate_S
  index                     bin/index of the first run's eval embeddings
                            (bin/search --index=RUN_DIR/index)
  report                    Table 1 with recovery, Table 2 and plots across
                            all runs, and how well the corpus's backgrounds
                            alone name its recordings (`demo.shortcut`)
                            (report.md, report.json)

Subprocesses rather than library calls, because the demo is also the proof
that the documented command lines work end to end, and each stage's log
(`logs/STAGE.log`) is exactly what a user running that command sees.

Stages start in the order above as soon as the stages they read from are
complete, at most `jobs` at a time: with 2, one core keeps working while the
other waits on a process start-up (each binary imports TensorFlow) or on
Python-bound work, and the next training starts while the previous model is
embedded and evaluated.

Rerunning continues an interrupted demo (`demo.stages`: stamps and
fingerprints): finished stages are skipped, an interrupted one resumes over
its partial outputs (extraction keeps finished shards, bin/train restores its
last checkpoint, export replaces a partial export), and a stage whose flags,
flag file or upstream stages changed runs afresh, with everything downstream
of it, because resuming from its outputs would mix two experiments.

This module is the demo's plan (which stages, with which flags: `plan_stages`)
and its report (Table 1 and the paper's structure: `write_report`); running
the plan is `demo.stages`'s. The settings are `config.demo.DemoConfig`.

Layout of the run directory:

  demo_config.json            the resolved DemoConfig
  corpus/                     WAVs and label CSVs
  features/{train,eval}/      TFRecord shards + manifest.json
  runs/S/                     bin/train model_dir (checkpoints, config.json)
  exports/S/                  SavedModel + metadata.json
  embeddings/R/{train,eval}.npz
  eval/R/                     bin/evaluate output (results.json, report.md,
                              per-class and projection plots, projector TSVs)
  logs/STAGE.log, stamps/STAGE.json
  report.md, report.json, per_class_ap.png
  shortcut.json               the background probe's result, kept for as
                              long as the corpus stays the same
"""

import math
import os
import time

from absl import logging

from triplet_audio.config import demo as demo_config
from triplet_audio.config import evaluation as eval_config
from triplet_audio.config import jsonio
from triplet_audio.config import options
from triplet_audio.demo import shortcut as shortcut_lib
from triplet_audio.demo import stages as stages_lib

# The settings and run names live in the config home; these names are kept
# here for the callers that know them from this module.
DemoConfig = demo_config.DemoConfig
BASELINE = demo_config.BASELINE
TOPLINE = demo_config.TOPLINE
ALL_RUNS = demo_config.ALL_RUNS
Stage = stages_lib.Stage
StageError = stages_lib.StageError
LOGS_DIR = stages_lib.LOGS_DIR
STAMPS_DIR = stages_lib.STAMPS_DIR

CONFIG_NAME = "demo_config.json"
REPORT_MD = "report.md"
REPORT_JSON = "report.json"
REPORT_STAGE = "report"
SHORTCUT_JSON = "shortcut.json"
CORPUS_STAGE = "corpus"

# Rough seconds per stage kind on a 2-core CPU, for the ETA until a stage of
# that kind has been timed in this invocation.
_PRIOR_SECONDS = {"corpus": 15.0, "features": 30.0, "train": 90.0,
                  "export": 15.0, "embed": 12.0, "evaluate": 30.0,
                  "index": 10.0, REPORT_STAGE: 30.0}


class Layout(stages_lib.RunLayout):
    """Paths inside the demo's run directory (absolute)."""

    @property
    def corpus(self):
        return self.path("corpus")

    def features(self, split):
        return self.path("features", split)

    def run(self, name):
        return self.path("runs", name)

    def export(self, name):
        return self.path("exports", name)

    def embeddings(self, name, split):
        return self.path("embeddings", name, "%s.npz" % split)

    def evaluation(self, name):
        return self.path("eval", name)

    @property
    def index(self):
        return self.path("index")


def plan_stages(config):
    """The demo's stages in execution order (the report is not one of them).

    Args:
      config: a validated DemoConfig.

    Returns:
      list of `Stage`.
    """
    lay = Layout(config.output_dir)
    corpus, ev = config.corpus, config.evaluation
    # The corpus and evaluation parts become the flags of bin/make_corpus and
    # bin/evaluate of the same names (0 on the command line for None).
    stages = [Stage(
        name=CORPUS_STAGE, kind="corpus", binary="make_corpus",
        args=["--output_dir=%s" % lay.corpus,
              "--num_train=%d" % corpus.num_train,
              "--num_eval=%d" % corpus.num_eval,
              "--duration_s=%r" % float(corpus.duration_s),
              "--num_classes=%d" % (corpus.num_classes or 0),
              "--seed=%d" % corpus.seed,
              "--workers=%d" % corpus.workers,
              "--corpus_version=%d" % corpus.corpus_version],
        outputs=[os.path.join(lay.corpus, name) for name in
                 ("train.csv", "eval.csv", "corpus.json")],
        clean=[lay.corpus])]
    for split in ("train", "eval"):
        stages.append(Stage(
            name="features_%s" % split, kind="features",
            binary="extract_features",
            args=["--input=%s" % os.path.join(lay.corpus, "%s.csv" % split),
                  "--output_dir=%s" % lay.features(split),
                  "--num_shards=%d" % config.num_shards,
                  "--workers=%d" % corpus.workers],
            outputs=[os.path.join(lay.features(split), "manifest.json")],
            clean=[lay.features(split)], deps=[CORPUS_STAGE]))
    eval_args = ["--eval_seed=%d" % ev.seed,
                 "--qbe_num_pos=%d" % ev.qbe_num_pos,
                 "--qbe_num_neg=%d" % ev.qbe_num_neg,
                 "--qbe_min_count=%d" % (ev.qbe_min_count or 0),
                 "--classifier_epochs=%d" % ev.epochs,
                 "--fewshot_epochs=%d" % ev.fewshot_epochs,
                 "--fewshot_per_class=%d" % ev.fewshot_per_class,
                 "--fewshot_draws=%d" % ev.fewshot_draws]
    flagfile = os.path.abspath(config.train_flagfile)
    # The baseline first: the cheapest complete row, and the one every
    # recovery figure needs.
    for name in (BASELINE,) + config.runs():
        if name == BASELINE:
            source, export_deps = "--representation=%s" % BASELINE, []
        else:
            stages.append(Stage(
                name="train_%s" % name, kind="train", binary="train",
                # The sampler and paths come last: a flag file or
                # --train_flag must not redirect a run to another sampler or
                # directory.
                args=(["--flagfile=%s" % flagfile] +
                      list(config.train_flags) +
                      ["--sampler=%s" % name,
                       "--train_data=%s" % lay.features("train"),
                       "--model_dir=%s" % lay.run(name)]),
                outputs=[os.path.join(lay.run(name), "train_summary.json"),
                         os.path.join(lay.run(name), "config.json")],
                clean=[lay.run(name)], deps=["features_train"],
                flagfiles=[flagfile]))
            # --overwrite: a resumed export may find a SavedModel that an
            # interrupted run finished but did not describe in metadata.json.
            stages.append(Stage(
                name="export_%s" % name, kind="export", binary="export",
                args=["--model_dir=%s" % lay.run(name),
                      "--export_dir=%s" % lay.export(name), "--overwrite"],
                outputs=[os.path.join(lay.export(name), "metadata.json"),
                         os.path.join(lay.export(name), "saved_model",
                                      "saved_model.pb")],
                clean=[lay.export(name)], deps=["train_%s" % name]))
            source = "--saved_model=%s" % lay.export(name)
            export_deps = ["export_%s" % name]
        for split in ("train", "eval"):
            stages.append(Stage(
                name="embed_%s_%s" % (name, split), kind="embed",
                binary="embed",
                args=["--input=%s" % lay.features(split),
                      "--output=%s" % lay.embeddings(name, split), source],
                outputs=[lay.embeddings(name, split)],
                clean=[lay.embeddings(name, split)],
                deps=["features_%s" % split] + export_deps))
        stages.append(Stage(
            name="evaluate_%s" % name, kind="evaluate", binary="evaluate",
            args=["--train=%s" % lay.embeddings(name, "train"),
                  "--eval=%s" % lay.embeddings(name, "eval"),
                  "--output_dir=%s" % lay.evaluation(name),
                  "--name=%s" % name] + eval_args,
            outputs=[os.path.join(lay.evaluation(name), "results.json")],
            clean=[lay.evaluation(name)],
            deps=["embed_%s_train" % name, "embed_%s_eval" % name]))
    # Sound search: an index of the first trained run's eval recordings (the
    # supervised topline in flags/demo_pipeline.cfg), so that
    # `bin/search --index=demo_run/index ...` works after `make demo`.
    if config.runs():
        first = config.runs()[0]
        stages.append(Stage(
            name="index", kind="index", binary="index",
            args=["--embeddings=%s" % lay.embeddings(first, "eval"),
                  "--output=%s" % lay.index, "--overwrite"],
            outputs=[os.path.join(lay.index, "index.json")],
            clean=[lay.index],
            deps=["embed_%s_eval" % first]))
    return stages


# ---------------------------------------------------------------- report
def structure_checks(results_by_name, runs):
    """The paper's Table 1 structure, checked on QbE mAP.

    Args:
      results_by_name: {name: results dict} of the evaluated runs.
      runs: the training runs of the demo.

    Returns:
      list of {"claim", "holds" (True / False / None when a run is
      missing), "detail"}.
    """
    def qbe(name):
        value = ((results_by_name.get(name) or {}).get("qbe") or {}).get("map")
        return None if value is None else float(value)

    unsupervised = [s for s in options.UNSUPERVISED_SAMPLERS if s in runs]
    scores = {name: qbe(name) for name in (BASELINE,) + tuple(runs)}
    checks = []

    def add(claim, names, holds_fn):
        values = [scores.get(n) for n in names]
        if not names or any(v is None for v in values):
            checks.append({"claim": claim, "holds": None,
                           "detail": "not measured (needs %s)" %
                           ", ".join(names)})
            return
        checks.append({"claim": claim, "holds": bool(holds_fn()),
                       "detail": ", ".join("%s %.3f" % (n, scores[n])
                                           for n in names)})

    add("every unsupervised sampler beats log-mel",
        [BASELINE] + unsupervised,
        lambda: all(scores[s] > scores[BASELINE] for s in unsupervised))
    if "proximity" in unsupervised and len(unsupervised) > 1:
        add("temporal proximity is the strongest single sampler",
            unsupervised,
            lambda: scores["proximity"] == max(scores[s]
                                               for s in unsupervised))
    if "joint" in runs and unsupervised:
        add("joint is at least as good as the best single sampler",
            unsupervised + ["joint"],
            lambda: scores["joint"] >= max(scores[s] for s in unsupervised))
    others = [n for n in (BASELINE,) + tuple(runs) if n != TOPLINE]
    if TOPLINE in runs:
        add("supervised triplets are the topline", [TOPLINE] + others,
            lambda: all(scores[TOPLINE] > scores[n] for n in others))
    return checks


def _checks_markdown(checks):
    lines = ["## The paper's structure on QbE mAP", ""]
    for check in checks:
        verdict = {True: "yes", False: "**no**", None: "n/a"}[check["holds"]]
        lines.append("- %s: %s (%s)" % (check["claim"], verdict,
                                         check["detail"]))
    return "\n".join(lines) + "\n"


def measure_shortcut(config):
    """How well the backgrounds alone name the corpus's training recordings.

    `demo.shortcut.measure` on the run's corpus, kept in shortcut.json for as
    long as the corpus stage's output (its stamp's token) and the probe's
    settings stay the same.

    Args:
      config: the DemoConfig.

    Returns:
      the `shortcut.measure` result, or {"error": reason} when the corpus
      cannot be measured (e.g. one written before events.csv existed).
    """
    lay = Layout(config.output_dir)
    stamp = stages_lib.read_json(lay.stamp(CORPUS_STAGE)) or {}
    token = stamp.get("token")
    cache_path = lay.path(SHORTCUT_JSON)
    cached = stages_lib.read_json(cache_path) or {}
    key = {"corpus_token": token, "settings": shortcut_lib.SETTINGS}
    if token and all(cached.get(k) == v for k, v in key.items()) and (
            "result" in cached):
        return cached["result"]
    try:
        result = shortcut_lib.measure(lay.corpus)
    except (OSError, ValueError, KeyError) as e:
        logging.warning("background shortcut not measured: %s", e)
        result = {"error": str(e)}
    jsonio.write_json(cache_path, dict(key, result=result))
    return result


def _shortcut_markdown(result, rows):
    lines = ["## The recording shortcut", "",
             shortcut_lib.summary_markdown(result).rstrip("\n"), "",
             "The temporal-proximity sampler learns whatever tells one "
             "recording from another; the higher these figures are above "
             "chance, the more of its task the background solves without "
             "the sound classes."]
    row = next((r for r in rows if r["name"] == "proximity"), None)
    if row is not None:
        def percent(part):
            value = row[part]["recovery"]
            return "n/a" if value is None or not math.isfinite(value) else (
                "%.0f%%" % (100.0 * value))
        lines[-1] += (" Proximity's recovery on this corpus (Table 1): QbE "
                      "%s, 1x512 %s, 2x512 %s." % (
                          percent(eval_config.QBE),
                          percent(eval_config.CLASSIFIER_1X512),
                          percent(eval_config.CLASSIFIER_2X512)))
    return "\n".join(lines) + "\n"


def training_budget(config):
    """Steps and batch size each training run of the demo ran.

    Args:
      config: the DemoConfig.

    Returns:
      {run name: {"steps", "batch_size"}} from each run's
      train_summary.json and config.json (values None where unreadable).
    """
    lay = Layout(config.output_dir)
    budget = {}
    for name in config.runs():
        summary = stages_lib.read_json(
            os.path.join(lay.run(name), "train_summary.json")) or {}
        train_config = stages_lib.read_json(
            os.path.join(lay.run(name), jsonio.CONFIG_NAME)) or {}
        budget[name] = {"steps": summary.get("step"),
                        "batch_size": train_config.get("batch_size")}
    return budget


def _budget_markdown(budget):
    pairs = sorted({(b["steps"], b["batch_size"]) for b in budget.values()},
                   key=str)
    if not budget or any(None in p for p in pairs):
        return ""
    if len(pairs) == 1:
        trained = "Every model trained %d steps of %d windows" % pairs[0]
    else:
        trained = "The models trained %s" % ", ".join(
            "%s %d steps of %d" % (name, b["steps"], b["batch_size"])
            for name, b in budget.items())
    return ("\n%s. The figures move with that budget, and not alike for "
            "every sampler (the README compares 120 and 480 steps); set it "
            "with --train_flag=--steps=N.\n" % trained)


def write_report(config):
    """Writes report.md, report.json and per_class_ap.png of the run.

    Args:
      config: the DemoConfig whose evaluations are complete.

    Returns:
      dict with "report_md", "report_json", "per_class_plot" (paths),
      "markdown" (report.md's text), "table1" (rows), "checks" and
      "shortcut" (`measure_shortcut`).
    """
    # Imported here: report loads TensorFlow (through evaluation) and
    # matplotlib, which the stages before it do not need in this process.
    from triplet_audio.evaluation import report  # pylint: disable=g-import-not-at-top
    lay = Layout(config.output_dir)
    names = (BASELINE,) + config.runs()
    results_by_name = {}
    for name in names:
        results = report.load_results([lay.evaluation(name)])
        results_by_name[name] = next(iter(results.values()))
    topline = TOPLINE if TOPLINE in results_by_name else None
    written = report.write_comparison_report(
        [lay.evaluation(n) for n in names], lay.root, baseline=BASELINE,
        topline=topline)
    checks = structure_checks(results_by_name, config.runs())
    rows = report.table1_rows(results_by_name, baseline=BASELINE,
                              topline=topline)
    shortcut = measure_shortcut(config)
    budget = training_budget(config)
    with open(written["report"], "a") as f:
        f.write("\n" + _checks_markdown(checks))
        f.write("\n" + _shortcut_markdown(shortcut, rows))
        f.write(_budget_markdown(budget))
        f.write("\nPer-run results, plots and projector files: eval/NAME/. "
                "Logs: logs/.\n")
    with open(written["report"]) as f:
        markdown = f.read()
    json_path = lay.path(REPORT_JSON)
    report.write_results_json({
        "baseline": BASELINE,
        "topline": topline,
        "table1": rows,
        "table2": {name: {k: (r.get("fewshot") or {}).get(k)
                          for k in ("map", "std", "architecture")}
                   for name, r in results_by_name.items()},
        "checks": checks,
        "shortcut": shortcut,
        "training_budget": budget,
        "runs": results_by_name,
        "run_dirs": {name: os.path.relpath(lay.evaluation(name), lay.root)
                     for name in names},
        "config": config,
    }, json_path)
    return {"report_md": written["report"], "report_json": json_path,
            "per_class_plot": written.get("per_class_plot"),
            "markdown": markdown, "table1": rows, "checks": checks,
            "shortcut": shortcut}


def run_demo(config, launch=None):
    """Runs (or continues) the whole demo and writes its report.

    Args:
      config: a DemoConfig (validated here).
      launch: for tests, a replacement of the subprocess launcher,
        `launch(stage, argv, log_path, prefix) -> exit status`.

    Returns:
      dict: everything `write_report` returns, plus "stages" (per-stage
      status and seconds) and "seconds" (wall time of this invocation);
      with `config.dry_run` only "stages" (with their commands) and
      "seconds".

    Raises:
      StageError: naming the stage that failed or was interrupted.
      ValueError: on an invalid config.
    """
    config.validate()
    lay = Layout(config.output_dir)
    stages = plan_stages(config)
    if config.dry_run:
        for index, stage in enumerate(stages, start=1):
            logging.info("[%d/%d] %s: %s", index, len(stages) + 1, stage.name,
                         stages_lib.command_line(stage))
        logging.info("[%d/%d] %s: %s and %s in %s", len(stages) + 1,
                     len(stages) + 1, REPORT_STAGE, REPORT_MD, REPORT_JSON,
                     lay.root)
        return {"stages": [{"stage": s.name, "status": "planned",
                            "command": stages_lib.command_line(s)}
                           for s in stages], "seconds": 0.0}
    os.makedirs(lay.root, exist_ok=True)
    # The dataclass serialised, parts nested.
    jsonio.write_config(lay.root, config, name=CONFIG_NAME)
    runner = stages_lib.Runner(
        stages, lay, jobs=config.jobs, progress_every=config.progress_every,
        launch=launch, prior_seconds=_PRIOR_SECONDS, final_kind=REPORT_STAGE,
        name="demo")
    with stages_lib.TermAsInterrupt():
        records = runner.run_all()
    start = time.monotonic()
    logging.info("[%d/%d] %s (elapsed %s)", runner.total, runner.total,
                 REPORT_STAGE, stages_lib.fmt_duration(start - runner.start))
    out = write_report(config)
    seconds = time.monotonic() - runner.start
    records.append({"stage": REPORT_STAGE, "status": "ran",
                    "seconds": round(time.monotonic() - start, 1)})
    # The timings join report.json once the report itself is timed.
    payload = jsonio.read_json(out["report_json"])
    payload.update(stages=records, seconds=round(seconds, 1))
    jsonio.write_json(out["report_json"], payload)
    out["stages"], out["seconds"] = records, seconds
    ran = sum(1 for r in records if r["status"] != "skipped")
    logging.info("demo finished in %s (%d stage(s) run, %d skipped); report: "
                 "%s\n%s", stages_lib.fmt_duration(seconds), ran,
                 len(records) - ran, out["report_md"], out["markdown"])
    return out
