"""Tests of beam_runner: Beam runners write the corpus the local runner does.

apache-beam is in the `test` extra, so these run in CI (`make test`). Where
it is missing they are skipped with a loud reason rather than failing the
suite: Beam is an optional extra of the package itself.
"""

import dataclasses
import importlib
import json
import logging as std_logging
import os
import shutil
import subprocess
import sys
import warnings

import pytest

from testdata import make_fixtures as F
from triplet_audio.features import extract
from triplet_audio.features import inputs
from triplet_audio.features import records
from triplet_audio.features import shards

try:
    import apache_beam  # noqa: F401  pylint: disable=unused-import
except ImportError:
    _WHY = ("apache-beam is not installed: the Beam extraction tests DID NOT "
            "RUN (pip install -e '.[test]' installs it)")
    # A warning as well: pytest lists warnings at the end of every run,
    # skip reasons only when asked (-rs).
    warnings.warn(_WHY)
    pytest.skip(_WHY, allow_module_level=True)
# After the check: only importable with apache_beam (and a broken import of
# our own must fail, not skip).
from triplet_audio.features import beam_runner  # noqa: E402  pylint: disable=g-import-not-at-top

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(REPO_ROOT, "bin", "extract_features")
DIRECT = "DirectRunner"


def _audio(fixtures_dir, rel=""):
    return os.path.join(fixtures_dir, F.AUDIO_DIR, rel)


def _files(directory):
    """{name: bytes} of every file in `directory` (hidden ones included)."""
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def _records_by_shard(corpus):
    """{shard name: [(source path, recording id, num windows), ...]}."""
    out = {}
    for path in records.list_shards(corpus):
        out[os.path.basename(path)] = [
            (e[records.SOURCE_PATH].decode(),
             e[records.RECORDING_ID].decode(), int(e[records.NUM_WINDOWS]))
            for e in records.records_from_paths([path]).as_numpy_iterator()]
    return out


def _extract(input_spec, out, runner, num_shards, **kw):
    config = extract.ExtractConfig(input=input_spec, output_dir=str(out),
                                   num_shards=num_shards, workers=1,
                                   runner=runner, **kw)
    return extract.run(config)


def _error_lines(caplog):
    """Our ERROR lines (Beam's own loggers may add theirs)."""
    return [r.getMessage() for r in caplog.records
            if r.levelno >= std_logging.ERROR and r.name == "absl"]


@pytest.fixture(scope="module", params=["directory", "csv"])
def both_runners(request, fixtures_dir, tmp_path_factory):
    """The same input extracted by the local runner and by DirectRunner.

    The directory holds every good and bad fixture; the CSV adds labels and
    splits. Three and two shards: several files per shard, in an order the
    writers must keep.
    """
    if request.param == "directory":
        input_spec, num_shards = _audio(fixtures_dir), 3
    else:
        input_spec, num_shards = os.path.join(fixtures_dir, F.LABELS_CSV), 2
    root = tmp_path_factory.mktemp("both_" + request.param)
    local = _extract(input_spec, root / "local", extract.LOCAL_RUNNER,
                     num_shards)
    beam_run = _extract(input_spec, root / "beam", DIRECT, num_shards)
    return dict(input=input_spec, num_shards=num_shards,
                local_dir=str(root / "local"), beam_dir=str(root / "beam"),
                local=local, beam=beam_run)


def test_directrunner_corpus_is_byte_identical_to_local(both_runners):
    local = _files(both_runners["local_dir"])
    beam_files = _files(both_runners["beam_dir"])
    # Same names: no plan file, no temporary attempt file left behind.
    assert sorted(beam_files) == sorted(local)
    assert records.MANIFEST_NAME in local
    assert len([n for n in local if n.endswith(records.SHARD_SUFFIX)]) == (
        both_runners["num_shards"])
    for name, data in local.items():
        assert beam_files[name] == data, name


def test_directrunner_keeps_shard_assignment_and_order(both_runners):
    items, _ = inputs.discover_inputs(both_runners["input"])
    num_shards = both_runners["num_shards"]
    failed = {f["path"] for f in both_runners["local"]["failures"]}
    by_shard = _records_by_shard(both_runners["beam_dir"])
    for index in range(num_shards):
        # File i of the sorted input in shard i % num_shards, in input order.
        expected = [i.path for i in items[index::num_shards]
                    if i.path not in failed]
        got = [path for path, _, _ in by_shard[records.shard_name(index,
                                                                  num_shards)]]
        assert got == expected
    assert by_shard == _records_by_shard(both_runners["local_dir"])
    windows = {rid: w for shard in by_shard.values() for _, rid, w in shard}
    assert sum(windows.values()) == both_runners["beam"]["totals"]["windows"]


def test_directrunner_reports_bad_files_like_local(both_runners,
                                                   fixtures_dir):
    local, beam_run = both_runners["local"], both_runners["beam"]
    for key in ("totals", "shards", "failures", "skipped", "warnings",
                "classes", "config", "frontend", "num_shards"):
        assert beam_run[key] == local[key], key
    assert beam_run["failures"]
    kinds = {_audio(fixtures_dir, rel): kind
             for kind, rels in F.BAD.items() for rel in rels}
    kinds[_audio(fixtures_dir, F.MISSING)] = "unreadable"
    for failure in beam_run["failures"]:
        assert failure["error"].startswith(kinds[failure["path"]] + ":"), (
            failure)
    assert beam_run["totals"]["failed"] == len(beam_run["failures"])
    assert beam_run["startup_seconds"] is None
    assert beam_run["resumed_shards"] == 0


@pytest.mark.parametrize("both_runners", ["directory"], indirect=True)
def test_beam_finishes_a_partial_local_corpus_identically(both_runners,
                                                          tmp_path,
                                                          monkeypatch):
    out = tmp_path / "partial"
    shutil.copytree(both_runners["local_dir"], out)
    # As a kill leaves it: one shard gone (summary left behind), no
    # manifest, and a temporary file of an earlier Beam attempt.
    gone = records.shard_name(1, both_runners["num_shards"])
    os.remove(out / gone)
    os.remove(out / records.MANIFEST_NAME)
    (out / (gone + ".0123abcd" + records.TEMP_SUFFIX)).write_bytes(b"junk")
    summary = _extract(both_runners["input"], out, DIRECT,
                       both_runners["num_shards"])
    assert summary["resumed_shards"] == both_runners["num_shards"] - 1
    assert _files(out) == _files(both_runners["local_dir"])

    # Complete: no Beam job at all.
    def no_job(self, plan_path):
        raise AssertionError("a job was launched for nothing")

    monkeypatch.setattr(beam_runner.BeamShardWriter, "_run", no_job)
    again = _extract(both_runners["input"], out, DIRECT,
                     both_runners["num_shards"])
    assert again["resumed_shards"] == both_runners["num_shards"]
    assert _files(out) == _files(both_runners["local_dir"])


def test_plan_lines_round_trip():
    items = (inputs.InputItem("/d/caf\u00e9, \"x\".wav", "caf\u00e9",
                               (0, 3), "train"),
             inputs.InputItem("/d/b.flac", "b"))
    task = shards.make_shard_tasks(items, 1, False, "/out")[0]
    line = beam_runner.task_to_json(task)
    assert "\n" not in line  # One task per line of the plan file.
    assert beam_runner.task_from_json(line) == task


def _config(fixtures_dir, tmp_path, **kw):
    kw.setdefault("input", _audio(fixtures_dir, "tones"))
    kw.setdefault("output_dir", str(tmp_path / "out"))
    kw.setdefault("runner", DIRECT)
    return lambda: extract.ExtractConfig(**kw)


@pytest.mark.parametrize("kw,message", [
    ({"runner": "NoSuchRunner"}, "runner: 'NoSuchRunner' is neither"),
    ({"runner": "no.such.Runner"}, "runner: 'no.such.Runner' is neither"),
    ({"beam_pipeline_options": ("--runner=FlinkRunner",)},
     "beam_pipeline_options: give the runner with --runner"),
    ({"beam_pipeline_options": ("--direct_num_workers=x",)},
     "beam_pipeline_options:"),
    ({"output_dir": "gs://bucket/corpus"}, "output_dir: 'gs://"),
    ({"input": "s3://bucket/audio"}, "input: 's3://"),
])
def test_unusable_runner_settings_exit_2_before_writing(
        kw, message, fixtures_dir, tmp_path, caplog):
    assert extract.main(_config(fixtures_dir, tmp_path, **kw)) == 2
    errors = _error_lines(caplog)
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith(message), errors
    assert not (tmp_path / "out").exists()


def test_unknown_runner_lists_the_known_ones(fixtures_dir, tmp_path, caplog):
    assert extract.main(_config(fixtures_dir, tmp_path,
                                runner="Dataflw")) == 2
    (error,) = _error_lines(caplog)
    assert "DirectRunner" in error and "DataflowRunner" in error
    assert "'local'" in error


def test_dataflow_needs_its_extra_or_its_options(fixtures_dir, tmp_path,
                                                 caplog):
    assert extract.main(_config(fixtures_dir, tmp_path,
                                runner="DataflowRunner")) == 2
    (error,) = _error_lines(caplog)
    try:
        importlib.import_module(
            "apache_beam.runners.dataflow.internal.apiclient")
        has_gcp = True
    except ImportError:
        has_gcp = False
    if has_gcp:  # Then Beam's own validation: no project, region, ...
        assert error.startswith("beam_pipeline_options: DataflowRunner "
                                "rejects them"), error
    else:
        assert error == ("runner: DataflowRunner needs Beam's Google Cloud "
                         "extras: pip install 'triplet-audio[dataflow]'")
    assert not (tmp_path / "out").exists()


def test_without_beam_the_error_says_how_to_install_it(
        fixtures_dir, tmp_path, caplog, monkeypatch):
    # As if apache-beam were not installed: its import fails.
    monkeypatch.setitem(sys.modules, "apache_beam", None)
    monkeypatch.delitem(sys.modules, "triplet_audio.features.beam_runner")
    # `from triplet_audio.features import beam_runner` would find the
    # attribute.
    monkeypatch.delattr("triplet_audio.features.beam_runner")
    assert extract.main(_config(fixtures_dir, tmp_path)) == 2
    (error,) = _error_lines(caplog)
    assert "pip install 'triplet-audio[beam]'" in error, error
    assert error.startswith("runner:")


def test_config_checks_beam_pipeline_options():
    config = extract.ExtractConfig(
        "in", "out", runner=DIRECT,
        beam_pipeline_options="--direct_num_workers=2, --x=y")
    assert config.beam_pipeline_options == ("--direct_num_workers=2", "--x=y")
    with pytest.raises(ValueError, match="^beam_pipeline_options: expected"):
        extract.ExtractConfig("in", "out", runner=DIRECT,
                              beam_pipeline_options=("project=p",))
    # With the local runner they would be ignored: refused instead.
    with pytest.raises(ValueError, match="^beam_pipeline_options: only"):
        extract.ExtractConfig("in", "out",
                              beam_pipeline_options=("--project=p",))


def test_a_failing_job_exits_1_and_leaves_no_partial_shard(
        fixtures_dir, tmp_path, caplog, monkeypatch):
    real_write_shard = shards.write_shard

    def write_then_fail(task, progress=None, temp_suffix=None):
        if task.index == 1:
            # Let the attempt leave its temporary file, then die.
            with open(task.shard_path + temp_suffix, "wb") as f:
                f.write(b"partial")
            raise OSError("No space left on device")
        return real_write_shard(task, progress, temp_suffix)

    # DirectRunner runs the DoFn in this process, so the patch reaches it.
    monkeypatch.setattr(shards, "write_shard", write_then_fail)
    out = tmp_path / "out"
    assert extract.main(_config(fixtures_dir, tmp_path,
                                output_dir=str(out))) == 1
    errors = _error_lines(caplog)
    assert len(errors) == 1 and "\n" not in errors[0], errors
    assert errors[0].startswith("runner: the DirectRunner job failed:")
    assert "No space left on device" in errors[0]
    names = os.listdir(out)
    assert records.shard_name(1, 2) not in names
    assert records.MANIFEST_NAME not in names
    assert not [n for n in names if n.endswith(records.TEMP_SUFFIX) or
                n.startswith(".")], names


def test_shards_the_launcher_cannot_see_are_an_error(
        fixtures_dir, tmp_path, caplog, monkeypatch):
    # Workers that write their shards where the launcher does not look:
    # what a cluster without a shared --output_dir does.
    real_write_shard = shards.write_shard
    elsewhere = tmp_path / "worker_disk"
    elsewhere.mkdir()

    def write_elsewhere(task, progress=None, temp_suffix=None):
        return real_write_shard(
            dataclasses.replace(task, output_dir=str(elsewhere)), progress,
            temp_suffix)

    monkeypatch.setattr(shards, "write_shard", write_elsewhere)
    assert extract.main(_config(fixtures_dir, tmp_path, num_shards=2)) == 1
    (error,) = _error_lines(caplog)
    assert "2 of 2 shards are not in" in error, error
    assert "same paths" in error
    assert len(records.list_shards(str(elsewhere))) == 2


def test_binary_with_directrunner_matches_the_local_binary(fixtures_dir,
                                                           tmp_path):
    src = _audio(fixtures_dir, "tones")
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    outs = {}
    for runner, extra in ((DIRECT, ["--beam_pipeline_options="
                                    "--direct_running_mode=in_memory"]),
                          ("local", [])):
        outs[runner] = str(tmp_path / runner)
        result = subprocess.run(
            [sys.executable, BINARY, "--input=" + src,
             "--output_dir=" + outs[runner], "--num_shards=2", "--workers=1",
             "--runner=" + runner] + extra,
            cwd=REPO_ROOT, env=env, capture_output=True, text=True,
            check=False)
        assert result.returncode == 0, result.stderr[-3000:]
    assert _files(outs[DIRECT]) == _files(outs["local"])
    with open(os.path.join(outs[DIRECT], records.MANIFEST_NAME)) as f:
        assert json.load(f)["totals"]["recordings"] == len(
            [r for r in F.GOOD if r.startswith("tones/")])


def test_help_documents_the_beam_flags():
    result = subprocess.run([sys.executable, BINARY, "--help"],
                            cwd=REPO_ROOT, capture_output=True, text=True,
                            check=False)
    # absl's --help exits 1; what matters is what it printed.
    assert "--beam_pipeline_options" in result.stdout, result.stderr
    assert "DirectRunner" in result.stdout


def test_the_local_runner_never_imports_beam(fixtures_dir, tmp_path):
    code = (
        "import sys\n"
        "from triplet_audio.features import extract\n"
        "extract.run(extract.ExtractConfig(%r, %r, num_shards=1, "
        "workers=1))\n"
        "assert 'apache_beam' not in sys.modules, 'imported'\n" %
        (_audio(fixtures_dir, "tones"), str(tmp_path / "out")))
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=REPO_ROOT)
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT,
                            env=env, capture_output=True, text=True,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
