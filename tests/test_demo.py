"""The one-command demo (triplet_audio/demo/runner.py and stages.py, bin/demo).

Two layers: the stage bookkeeping (skip, resume, stale, failure, report) with
a fake launcher that writes each stage's outputs instead of running it, in
milliseconds; and a miniature demo through bin/demo that runs the real
binaries end to end, reruns (everything skipped) and fails on a bad flag.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

from absl import flags
import pytest

from triplet_audio.config import corpus as corpus_config
from triplet_audio.config import demo as demo_config
from triplet_audio.config import evaluation as eval_config
from triplet_audio.config import fields
from triplet_audio.config import jsonio
from triplet_audio.demo import runner
from triplet_audio.demo import stages as stages_lib
from triplet_audio.evaluation import metrics
from triplet_audio.evaluation import report

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "bin", "demo")

# Fake QbE mAPs with the paper's structure; the classifier columns are the
# same minus 0.1, few-shot minus 0.2.
FAKE_QBE = {"logmel": 0.40, "supervised": 0.80, "noise": 0.45,
            "translation": 0.50, "mixing": 0.48, "proximity": 0.60,
            "joint": 0.62}


class FakeLauncher:
    """Stands in for the subprocesses: records calls, writes the outputs.

    Attributes:
      calls: names of the stages launched, in order.
      states: the stage name -> whether its outputs directory held the marker
        of an earlier launch when it was launched again.
      fail: {stage name: (exit status, log text)} for stages that fail
        (once, then they are removed from the dict).
    """

    def __init__(self, qbe=None):
        self.calls = []
        self.fail = {}
        self.qbe = dict(qbe or FAKE_QBE)
        self.found_marker = {}

    def __call__(self, stage, argv, log_path, prefix):
        del prefix
        assert argv[0] == sys.executable
        assert os.path.basename(argv[1]) == stage.binary
        self.calls.append(stage.name)
        marker = os.path.join(stage.clean[0], "partial.marker") if (
            stage.kind in ("train", "features")) else None
        if marker:
            self.found_marker[stage.name] = os.path.exists(marker)
            os.makedirs(stage.clean[0], exist_ok=True)
            with open(marker, "w") as f:
                f.write("left by an earlier launch")
        if stage.name in self.fail:
            status, text = self.fail.pop(stage.name)
            with open(log_path, "a") as f:
                f.write(text)
            return status
        for path in stage.outputs:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write("{}")
        if stage.kind == "evaluate":
            name = stage.name[len("evaluate_"):]
            report.write_results_json(_fake_results(name, self.qbe[name]),
                                      stage.outputs[0])
        return 0


def _fake_results(name, qbe):
    per_class = {"a": qbe - 0.05, "b": qbe + 0.05}
    return {
        "name": name, "representation": name,
        metrics.QBE: {"map": qbe, "chance": 0.2, "per_class": per_class},
        metrics.CLASSIFIER_1X512: {"map": qbe - 0.1,
                                      "per_class": per_class},
        metrics.CLASSIFIER_2X512: {"map": qbe - 0.1,
                                      "per_class": per_class},
        metrics.FEWSHOT: {"map": qbe - 0.2, "std": 0.01,
                             "maps": [qbe - 0.21, qbe - 0.19],
                             "architecture": "1x512"},
    }


@pytest.fixture
def flagfile(tmp_path):
    path = tmp_path / "train.cfg"
    path.write_text("--model=small\n--steps=3\n")
    return str(path)


def _config(tmp_path, flagfile, **kwargs):
    # One stage at a time, so that the order of the launches is known.
    kwargs.setdefault("jobs", 1)
    return runner.DemoConfig(output_dir=str(tmp_path / "run"),
                           train_flagfile=flagfile, **kwargs)


# ------------------------------------------------------------------ plan
def test_plan_has_every_stage_in_dependency_order(tmp_path, flagfile):
    stages = runner.plan_stages(_config(tmp_path, flagfile).validate())
    names = [s.name for s in stages]
    # corpus, 2 x features, logmel (2 embeds + evaluate), per training run
    # train, export, 2 embeds, evaluate, and the search index.
    assert len(names) == 3 + 3 + 5 * len(runner.ALL_RUNS) + 1
    assert len(set(names)) == len(names)
    position = {n: i for i, n in enumerate(names)}
    for stage in stages:
        for dep in stage.deps:
            assert position[dep] < position[stage.name], (dep, stage.name)
    assert names[:6] == ["corpus", "features_train", "features_eval",
                         "embed_logmel_train", "embed_logmel_eval",
                         "evaluate_logmel"]
    assert names.index("train_supervised") < names.index("train_noise")
    # make demo leaves an index of the topline's eval embeddings behind.
    index = stages[position["index"]]
    assert index.binary == "index" and index.deps == ["embed_supervised_eval"]
    assert "--embeddings=%s" % os.path.join(
        str(tmp_path / "run"), "embeddings", "supervised", "eval.npz") in (
            index.args)


def test_plan_passes_settings_to_the_binaries(tmp_path, flagfile):
    config = _config(tmp_path, flagfile, train_flags=("--steps=7",),
                     evaluation=eval_config.EvaluationConfig(qbe_min_count=12),
                     corpus=corpus_config.CorpusConfig(num_eval=33)).validate()
    by_name = {s.name: s for s in runner.plan_stages(config)}
    train = by_name["train_proximity"].args
    # Flag file first, overrides next, and sampler / paths last so that
    # nothing redirects a run.
    assert train[0] == "--flagfile=%s" % os.path.abspath(flagfile)
    assert train[1] == "--steps=7"
    assert train[2] == "--sampler=proximity"
    assert train[-1].startswith("--model_dir=") and train[-1].endswith(
        os.path.join("runs", "proximity"))
    assert "--qbe_min_count=12" in by_name["evaluate_joint"].args
    assert "--num_eval=33" in by_name["corpus"].args
    assert "--corpus_version=2" in by_name["corpus"].args
    assert "--representation=logmel" in by_name["embed_logmel_eval"].args
    assert any(a.startswith("--saved_model=") and a.endswith(
        os.path.join("exports", "mixing"))
        for a in by_name["embed_mixing_train"].args)


@pytest.mark.parametrize("field, value, message", [
    ("samplers", ("proximity", "bogus"), "--samplers: unknown bogus"),
    ("samplers", ("noise", "noise"), "--samplers: names a run twice"),
    ("samplers", (), "--samplers: name at least one"),
    ("train_flags", ("steps=3",), "--train_flag: 'steps=3' is not a flag"),
    ("corpus.num_eval", 0, "--num_eval: must be >= 1"),
    ("corpus.duration_s", float("nan"), "--duration_s"),
    ("evaluation.qbe_num_pos", 0, "--qbe_num_pos: must be an integer >= 1"),
    ("output_dir", "", "--output_dir: required"),
])
def test_config_rejects_bad_values(tmp_path, flagfile, field, value,
                                   message):
    config = _config(tmp_path, flagfile)
    *parts, name = field.split(".")
    target = config
    for part in parts:
        target = getattr(target, part)
    setattr(target, name, value)
    with pytest.raises(ValueError, match="^" + message.replace(
            "(", r"\(")):
        config.validate()


def test_config_rejects_missing_flagfile(tmp_path):
    with pytest.raises(ValueError, match="--train_flagfile: no such file"):
        _config(tmp_path, str(tmp_path / "nope.cfg")).validate()


def test_corpus_and_evaluation_settings_are_parts_not_restated():
    # bin/demo's corpus and evaluation flags are those of bin/make_corpus and
    # bin/evaluate: the same defaults, help and bounds, from the same fields.
    demo_flags = flags.FlagValues()
    fields.define_flags(demo_config.DemoConfig, demo_flags,
                        exclude=demo_config.FLAG_EXCLUDE)
    for part in (corpus_config.CorpusConfig, eval_config.EvaluationConfig):
        part_flags = flags.FlagValues()
        fields.define_flags(part, part_flags, exclude=("out_dir",))
        for name in part_flags:
            assert name in demo_flags, name
            for attr in ("default", "help"):
                assert getattr(demo_flags[name], attr) == getattr(
                    part_flags[name], attr), (name, attr)
    # The demo's output_dir is the run directory, not the corpus's.
    assert "Run directory of the demo" in demo_flags["output_dir"].help
    assert "train_flag" not in demo_flags  # Repeatable: flagdefs defines it.
    demo_flags(["prog", "--output_dir=run"])
    config = fields.config_from_flags(
        demo_config.DemoConfig, demo_flags, exclude=demo_config.FLAG_EXCLUDE,
        train_flags=())
    assert config == demo_config.DemoConfig(output_dir="run")
    assert config.corpus == corpus_config.CorpusConfig()
    assert config.evaluation == eval_config.EvaluationConfig()


def _flag_lines(path):
    with open(path) as f:
        return [l.strip() for l in f
                if l.strip() and not l.strip().startswith("#")]


def test_shipped_flagfile_sets_the_demo_sizes_and_evaluation():
    """flags/demo_pipeline.cfg, not the defaults, holds the demo's settings."""
    values = flags.FlagValues()
    fields.define_flags(demo_config.DemoConfig, values,
                        exclude=demo_config.FLAG_EXCLUDE)
    values(["prog", "--output_dir=run"] + _flag_lines(
        os.path.join(REPO, "flags", "demo_pipeline.cfg")))
    config = fields.config_from_flags(
        demo_config.DemoConfig, values, exclude=demo_config.FLAG_EXCLUDE,
        train_flags=())
    assert (config.corpus.num_train, config.corpus.num_eval,
            config.corpus.num_classes, config.corpus.workers,
            config.corpus.corpus_version) == (300, 240, None, 0, 2)
    assert config.evaluation.qbe_min_count == 15
    assert (config.evaluation.epochs, config.evaluation.fewshot_epochs) == (
        10, 20)
    assert config.samplers == runner.ALL_RUNS
    assert (config.num_shards, config.jobs) == (4, 2)


def test_demo_config_json_is_the_dataclass(tmp_path, flagfile):
    config = _config(tmp_path, flagfile, samplers=("noise",),
                     evaluation=eval_config.EvaluationConfig(qbe_min_count=7))
    runner.run_demo(config, launch=FakeLauncher())
    saved = jsonio.read_json(str(tmp_path / "run" / runner.CONFIG_NAME))
    assert saved == jsonio.to_jsonable(config)
    assert saved["evaluation"]["qbe_min_count"] == 7
    assert saved["corpus"]["num_train"] == config.corpus.num_train
    with open(tmp_path / "run" / runner.REPORT_JSON) as f:
        assert json.load(f)["config"] == saved


def test_binaries_are_found_in_the_checkout():
    for name in ("make_corpus", "extract_features", "train", "export",
                 "embed", "evaluate"):
        assert stages_lib.binary_path(name) == os.path.join(REPO, "bin",
                                                            name)


def test_flagfile_fingerprint_follows_includes_beside_the_file(tmp_path):
    (tmp_path / "base.cfg").write_text("--steps=3\n")
    top = tmp_path / "top.cfg"
    top.write_text("--flagfile=base.cfg\n--model=small\n")
    before = stages_lib.file_digest(str(top))
    (tmp_path / "base.cfg").write_text("--steps=4\n")
    assert stages_lib.file_digest(str(top)) != before


# ----------------------------------------------------- skip / resume / stale
def test_rerun_skips_every_complete_stage(tmp_path, flagfile):
    config = _config(tmp_path, flagfile)
    first = FakeLauncher()
    out = runner.run_demo(config, launch=first)
    assert len(first.calls) == len(runner.plan_stages(config))
    assert all(r["status"] == "ran" for r in out["stages"])
    second = FakeLauncher()
    out = runner.run_demo(config, launch=second)
    assert second.calls == []
    assert [r["status"] for r in out["stages"][:-1]] == (
        ["skipped"] * len(first.calls))
    assert out["stages"][-1]["stage"] == runner.REPORT_STAGE


def test_parallel_stages_start_only_after_their_inputs(tmp_path, flagfile):
    config = _config(tmp_path, flagfile, jobs=3)
    stages = {s.name: s for s in runner.plan_stages(config)}
    complete = set()
    running = []
    peak = [0]
    inner = FakeLauncher()

    def launch(stage, argv, log_path, prefix):
        assert set(stage.deps) <= complete, (stage.name, stage.deps)
        running.append(stage.name)
        peak[0] = max(peak[0], len(running))
        time.sleep(0.02)  # Long enough for the others to start beside it.
        status = inner(stage, argv, log_path, prefix)
        running.remove(stage.name)
        complete.add(stage.name)
        return status

    out = runner.run_demo(config, launch=launch)
    assert sorted(inner.calls) == sorted(stages)
    assert 1 < peak[0] <= 3
    # Records stay in plan order whatever order the stages ended in.
    assert [r["stage"] for r in out["stages"][:-1]] == list(stages)


def test_changed_training_flags_rerun_only_the_trained_rows(tmp_path,
                                                            flagfile):
    config = _config(tmp_path, flagfile, samplers=("supervised", "noise"))
    runner.run_demo(config, launch=FakeLauncher())
    config.train_flags = ("--learning_rate=0.01",)
    again = FakeLauncher()
    runner.run_demo(config, launch=again)
    # The baseline and the data are untouched; each trained row runs from
    # scratch: its stale run directory was removed first.
    assert again.calls == [
        "train_supervised", "export_supervised", "embed_supervised_train",
        "embed_supervised_eval", "evaluate_supervised",
        "train_noise", "export_noise", "embed_noise_train",
        "embed_noise_eval", "evaluate_noise", "index"]
    assert again.found_marker == {"train_supervised": False,
                                  "train_noise": False}


def test_changed_flagfile_contents_are_stale(tmp_path, flagfile):
    config = _config(tmp_path, flagfile, samplers=("proximity",))
    runner.run_demo(config, launch=FakeLauncher())
    with open(flagfile, "a") as f:
        f.write("--batch_size=12\n")
    again = FakeLauncher()
    runner.run_demo(config, launch=again)
    assert again.calls[0] == "train_proximity"
    assert "corpus" not in again.calls


def test_changed_corpus_reruns_everything_downstream(tmp_path, flagfile):
    config = _config(tmp_path, flagfile, samplers=("proximity",))
    first = FakeLauncher()
    runner.run_demo(config, launch=first)
    config.corpus.num_train += 1
    again = FakeLauncher()
    runner.run_demo(config, launch=again)
    assert again.calls == first.calls


def test_interrupted_stage_resumes_over_its_partial_outputs(tmp_path,
                                                            flagfile):
    config = _config(tmp_path, flagfile, samplers=("supervised", "proximity"))
    first = FakeLauncher()
    first.fail["train_proximity"] = (3, "signal 2: checkpointed at step 2\n")
    with pytest.raises(runner.StageError, match="stage train_proximity failed "
                       r"\(exit status 3\): signal 2: checkpointed"):
        runner.run_demo(config, launch=first)
    assert first.calls[-1] == "train_proximity"
    again = FakeLauncher()
    out = runner.run_demo(config, launch=again)
    assert again.calls == ["train_proximity", "export_proximity",
                           "embed_proximity_train", "embed_proximity_eval",
                           "evaluate_proximity", "index"]
    # Resumed, not cleaned: the checkpoint of the first attempt was there.
    assert again.found_marker == {"train_proximity": True}
    status = {r["stage"]: r["status"] for r in out["stages"]}
    assert status["train_proximity"] == "resumed"
    assert status["train_supervised"] == "skipped"


def test_sigterm_stops_the_demo_and_the_stage_resumes(tmp_path, flagfile):
    config = _config(tmp_path, flagfile, samplers=("proximity",))
    inner = FakeLauncher()

    def launch(stage, argv, log_path, prefix):
        if stage.name != "train_proximity":
            return inner(stage, argv, log_path, prefix)
        inner.calls.append(stage.name)
        # What `kill`, `timeout` or a scheduler does; the stage then stops
        # the way bin/train does on a signal.
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
        return 3

    with pytest.raises(runner.StageError, match="^interrupted during stage"
                       r"\(s\) train_proximity; rerun"):
        runner.run_demo(config, launch=launch)
    assert inner.calls[-1] == "train_proximity"
    # SIGTERM is back to what it was.
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    again = FakeLauncher()
    out = runner.run_demo(config, launch=again)
    assert again.calls[0] == "train_proximity"
    status = {r["stage"]: r["status"] for r in out["stages"]}
    assert status["train_proximity"] == "resumed"


def test_failure_names_the_stage_shows_the_reason_and_stops(tmp_path,
                                                            flagfile):
    config = _config(tmp_path, flagfile, samplers=("supervised", "noise"))
    launcher = FakeLauncher()
    launcher.fail["export_supervised"] = (
        1, "Traceback...\nerror: no checkpoint in runs/supervised\n")
    with pytest.raises(runner.StageError) as info:
        runner.run_demo(config, launch=launcher)
    message = str(info.value)
    assert message.startswith("stage export_supervised failed (exit status "
                              "1): error: no checkpoint in runs/supervised")
    assert os.path.join("logs", "export_supervised.log") in message
    assert launcher.calls[-1] == "export_supervised"
    assert not os.path.exists(tmp_path / "run" / runner.REPORT_MD)


def test_stage_that_writes_nothing_fails(tmp_path, flagfile):
    config = _config(tmp_path, flagfile, samplers=("noise",))

    def silent(stage, argv, log_path, prefix):
        del stage, argv, log_path, prefix
        return 0

    with pytest.raises(runner.StageError,
                       match="stage corpus exited 0 but did not write"):
        runner.run_demo(config, launch=silent)


def test_dry_run_writes_nothing(tmp_path, flagfile):
    config = _config(tmp_path, flagfile, dry_run=True)
    launcher = FakeLauncher()
    out = runner.run_demo(config, launch=launcher)
    assert launcher.calls == []
    assert not os.path.exists(config.output_dir)
    assert out["stages"][0]["command"].startswith("bin/make_corpus ")


# ---------------------------------------------------------------- report
def test_report_has_table1_with_recovery_and_structure(tmp_path, flagfile):
    config = _config(tmp_path, flagfile)
    out = runner.run_demo(config, launch=FakeLauncher())
    run = tmp_path / "run"
    markdown = (run / runner.REPORT_MD).read_text()
    assert markdown == out["markdown"]
    # Proximity recovers (0.60 - 0.40) / (0.80 - 0.40) = 50% of QbE.
    assert "| proximity | 0.600 | 50% | 0.500 | 50% |" in markdown
    assert "| supervised (topline) | 0.800 | 100% |" in markdown
    assert "| logmel (baseline) | 0.400 | 0% |" in markdown
    assert "## Table 2" in markdown and "0.420 ± 0.010" in markdown
    assert "every unsupervised sampler beats log-mel: yes" in markdown
    # The fake corpus cannot be probed; the report says so and goes on.
    assert "## The recording shortcut\n\nNot measured: " in markdown
    assert "Proximity's recovery on this corpus (Table 1): QbE 50%" in (
        markdown)
    assert os.path.exists(run / report.PER_CLASS_PLOT_NAME)
    with open(run / runner.REPORT_JSON) as f:
        data = json.load(f)
    rows = {r["name"]: r for r in data["table1"]}
    assert rows["joint"][metrics.QBE]["recovery"] == pytest.approx(0.55)
    assert rows["supervised"]["role"] == "topline"
    assert set(data["runs"]) == set(runner.ALL_RUNS) | {"logmel"}
    assert data["runs"]["noise"][metrics.QBE]["map"] == 0.45
    assert all(c["holds"] for c in data["checks"])
    assert "error" in data["shortcut"]
    assert data["stages"][-1]["stage"] == runner.REPORT_STAGE
    assert data["seconds"] >= 0


def test_shortcut_is_measured_once_per_corpus(tmp_path, flagfile,
                                             monkeypatch):
    calls = []

    def measure(corpus_dir):
        calls.append(corpus_dir)
        return {"error": "fake corpus"}

    monkeypatch.setattr(runner.shortcut_lib, "measure", measure)
    config = _config(tmp_path, flagfile, samplers=("noise",))
    runner.run_demo(config, launch=FakeLauncher())
    runner.run_demo(config, launch=FakeLauncher())
    assert calls == [os.path.join(config.output_dir, "corpus")]
    config.corpus.num_train += 1  # A new corpus is probed again.
    out = runner.run_demo(config, launch=FakeLauncher())
    assert len(calls) == 2
    assert out["shortcut"] == {"error": "fake corpus"}
    assert "Not measured: fake corpus." in out["markdown"]


def test_structure_checks_say_which_claim_fails():
    scores = dict(FAKE_QBE, proximity=0.47, noise=0.39)
    results = {n: {"qbe": {"map": v}} for n, v in scores.items()}
    checks = {c["claim"]: c["holds"]
              for c in runner.structure_checks(results, runner.ALL_RUNS)}
    assert checks == {
        "every unsupervised sampler beats log-mel": False,
        "temporal proximity is the strongest single sampler": False,
        "joint is at least as good as the best single sampler": True,
        "supervised triplets are the topline": True}
    # A run that was not evaluated is "not measured", not a verdict.
    del results["joint"]
    checks = {c["claim"]: c["holds"]
              for c in runner.structure_checks(results, runner.ALL_RUNS)}
    assert checks["joint is at least as good as the best single sampler"] \
        is None


def test_progress_line_is_the_last_log_line_without_prefix(tmp_path):
    log = tmp_path / "train.log"
    log.write_text("==== demo train: started\n"
                   "I1125 18:15:22.560946 139663854136192 training.py:412] "
                   "step 25/150  loss 0.0562\n\n")
    assert stages_lib.last_line(str(log)) == "step 25/150  loss 0.0562"
    assert stages_lib.last_line(str(tmp_path / "missing.log")) == ""


# ------------------------------------------------------------ bin/demo
def _run_demo(*args, timeout=300):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    return subprocess.run([sys.executable, DEMO] + list(args), cwd=REPO,
                          env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_help_lists_every_flag():
    proc = _run_demo("--help", timeout=60)
    for flag in ("output_dir", "samplers", "train_flagfile", "train_flag",
                 "num_train", "num_eval", "duration_s", "num_classes", "seed",
                 "corpus_version",
                 "num_shards", "workers", "eval_seed", "qbe_num_pos",
                 "qbe_num_neg", "qbe_min_count", "classifier_epochs",
                 "fewshot_epochs", "fewshot_per_class", "fewshot_draws",
                 "progress_every", "jobs", "dry_run"):
        assert "--%s:" % flag in proc.stdout or "--[no]%s:" % flag in (
            proc.stdout), flag


def test_demo_flags_coexist_with_the_other_groups():
    # The demo reuses the names of bin/make_corpus, bin/extract_features and
    # bin/evaluate flags; a process (e.g. a test) may define every group.
    code = ("from triplet_audio.cli import flagdefs as f; "
            "f.define_extract_flags(); f.define_corpus_flags(); "
            "f.define_evaluate_flags(); f.define_train_flags(); "
            "f.define_demo_flags(); "
            "f.FLAGS(['x', '--output_dir=d', '--num_eval=7', "
            "'--qbe_min_count=3', '--samplers=noise']); "
            "c = f.demo_config_from_flags(); "
            "print(c.output_dir, c.corpus.num_eval, "
            "c.evaluation.qbe_min_count, c.samplers)")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["d", "7", "3", "('noise',)"]


def test_shipped_flagfile_plans_the_full_demo(tmp_path):
    """flags/demo_pipeline.cfg parses and plans every Table 1 row."""
    proc = _run_demo("--flagfile=flags/demo_pipeline.cfg",
                     "--output_dir=%s" % (tmp_path / "run"), "--dry_run",
                     timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert not os.path.exists(tmp_path / "run")
    for name in runner.ALL_RUNS:
        assert "train_%s: bin/train --flagfile=%s" % (
            name, os.path.join(REPO, "flags", "demo.cfg")) in proc.stderr
    assert "evaluate_logmel: bin/evaluate" in proc.stderr


def test_bad_flag_is_one_line():
    proc = _run_demo("--output_dir=x", "--samplers=proximity,bogus",
                     timeout=60)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --samplers: unknown bogus"), (
        proc.stderr)


# A few recordings of a few seconds, 5 classes (a recording has 1-3, so
# supervised negatives exist), a handful of steps, tiny evaluations.
MINI = ["--samplers=supervised,proximity", "--num_train=16", "--num_eval=12",
        "--duration_s=3", "--num_classes=5", "--num_shards=1", "--workers=1",
        "--qbe_num_pos=3", "--qbe_num_neg=3", "--qbe_min_count=2",
        "--classifier_epochs=1", "--fewshot_epochs=1",
        "--fewshot_per_class=2", "--fewshot_draws=1", "--progress_every=2"]
MINI_TRAIN = ("--flagfile=%s\n--steps=4\n--batch_size=12\n--warmup_steps=0\n"
              "--checkpoint_every=2\n--log_every=2\n--shuffle_buffer=64\n" %
              os.path.join(REPO, "flags", "demo.cfg"))


@pytest.fixture(scope="module")
def mini_demo(tmp_path_factory):
    """The miniature demo, run once through bin/demo."""
    root = tmp_path_factory.mktemp("mini_demo")
    flagfile = root / "train.cfg"
    flagfile.write_text(MINI_TRAIN)
    args = MINI + ["--output_dir=%s" % (root / "run"),
                   "--train_flagfile=%s" % flagfile]
    proc = _run_demo(*args)
    assert proc.returncode == 0, proc.stderr[-5000:]
    return root / "run", args, proc


def test_mini_demo_writes_every_report_file(mini_demo):
    run, _, proc = mini_demo
    markdown = (run / runner.REPORT_MD).read_text()
    # The binary prints the tables.
    assert proc.stdout == markdown
    for row in ("| supervised (topline) |", "| logmel (baseline) |",
                "| proximity |"):
        assert row in markdown
    with open(run / runner.REPORT_JSON) as f:
        data = json.load(f)
    assert [r["name"] for r in data["table1"]] == [
        "supervised", "logmel", "proximity"]
    for name in ("logmel", "supervised", "proximity"):
        results = data["runs"][name]
        assert 0.0 <= results[metrics.QBE]["map"] <= 1.0
        for name_ in (report.RESULTS_NAME, report.PER_CLASS_PLOT_NAME,
                      report.PROJECTION_PLOT_NAME):
            assert os.path.exists(run / "eval" / name / name_), (name, name_)
    for name in ("supervised", "proximity"):
        assert os.path.exists(run / "exports" / name / "saved_model" /
                              "saved_model.pb")
        with open(run / "runs" / name / "train_summary.json") as f:
            assert json.load(f)["step"] == 4
    assert os.path.exists(run / report.PER_CLASS_PLOT_NAME)
    assert os.path.exists(run / runner.CONFIG_NAME)
    # The background probe ran on the (version 2) corpus.
    shortcut = data["shortcut"]
    assert shortcut["corpus_version"] == 2, shortcut
    assert shortcut["recordings"] == 16
    assert "## The recording shortcut\n\nA linear probe (" in markdown
    assert "Every model trained 4 steps of 12 windows." in markdown
    assert data["training_budget"] == {
        name: {"steps": 4, "batch_size": 12}
        for name in ("supervised", "proximity")}
    logs = sorted(os.listdir(run / runner.LOGS_DIR))
    assert "train_proximity.log" in logs and "index.log" in logs
    assert len(logs) == 17
    assert "step 4/4" in (run / "logs" / "train_proximity.log").read_text()
    assert re.search(r"\[\d+/18\] evaluate_proximity", proc.stderr)
    # Progress of a running stage: its last log line, absl prefix removed.
    assert re.search(r"\] \[\d+/18\] \w+ \.\.\. \S", proc.stderr), (
        proc.stderr[-3000:])


def test_mini_demo_rerun_skips_completed_stages(mini_demo):
    run, args, _ = mini_demo
    logs = run / runner.LOGS_DIR
    before = {n: os.path.getmtime(logs / n) for n in os.listdir(logs)}
    proc = _run_demo(*args, timeout=120)
    assert proc.returncode == 0, proc.stderr[-5000:]
    assert proc.stderr.count("complete, skipped") == 17
    assert {n: os.path.getmtime(logs / n) for n in os.listdir(logs)} == before
    with open(run / runner.REPORT_JSON) as f:
        stages = json.load(f)["stages"]
    assert [s["status"] for s in stages] == ["skipped"] * 17 + ["ran"]


def test_mini_demo_failing_stage_stops_with_its_name(mini_demo):
    # Runs last of the three: it leaves the training runs stale.
    run, args, _ = mini_demo
    # One stage at a time: which training fails first is then known.
    proc = _run_demo(*(args + ["--train_flag=--no_such_flag=1", "--jobs=1"]),
                     timeout=120)
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stage train_supervised failed (exit "
                           "status 1): error: "), proc.stderr[-3000:]
    assert "no_such_flag" in last
    assert os.path.join("logs", "train_supervised.log") in last
    # Stopped there: the stages after it did not start; those before it were
    # complete and skipped.
    assert "[8/17]" not in proc.stderr
    assert proc.stderr.count("complete, skipped") == 6
    with open(run / runner.STAMPS_DIR / "train_supervised.json") as f:
        assert json.load(f)["status"] == "running"
