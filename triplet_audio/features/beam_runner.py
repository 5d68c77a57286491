"""The Beam runner: the shards of an extraction, written by a Beam pipeline.

`extract.run(config)` with `config.runner` naming a Beam runner
(DirectRunner, DataflowRunner, FlinkRunner, SparkRunner, ...) plans,
resumes and writes manifest.json exactly as with the local runner
(`local_runner`); only the shards still to do are handed to
`BeamShardWriter.write_shards`, which runs

  plan file (one `shards.ShardTask` per line, JSON)
    | ReadFromText
    | Reshuffle                  spread the shards over the workers
    | ParDo(_WriteShardFn)       shards.write_shard: one whole shard, its
                                 .tfrecord and .json renamed into place

One DoFn call writes one shard with the code the local runner uses
(`shards.write_shard`: the same files in the same order, the same front-end
batches), so shards, summaries and manifest are byte-identical to a local
run, and bad files are reported in the same way. The unit of parallelism is
the shard: ask for a few times as many --num_shards as workers.

Why a plan file rather than `beam.Create(tasks)`: Create embeds its elements
in the job graph, which Dataflow caps at 10 MB, and a million file paths do
not fit. The file holds them; the graph holds its path. The Reshuffle stops
the runner fusing the read with the writes, which would put every shard on
the one worker that read the (small) plan.

Paths: audio is decoded by libsndfile from files, and shards are committed
by renaming, so --input and --output_dir must be POSIX paths that the
launcher and every worker see at the same place: a local disk for
DirectRunner, a shared mount (NFS, Filestore, gcsfuse, ...) for a cluster.
URLs (gs://, s3://, hdfs://) are refused up front, and a job whose workers
wrote somewhere else is caught afterwards: the launcher checks that every
shard it asked for is committed in --output_dir.

Retries: a runner may retry a failed shard, or, having lost sight of a
worker, run a second attempt beside the first. Each attempt writes under
temporary names of its own, and what it renames into place is the same
bytes, so either way the shard ends up as a local run would write it.
"""

import contextlib
import dataclasses
import glob
import importlib
import io
import json
import os
import re
import time
import uuid

from absl import logging
import apache_beam as beam
from apache_beam.options import pipeline_options as beam_options
from apache_beam.runners import runner as beam_runner

from triplet_audio.features import decode_worker
from triplet_audio.features import inputs
from triplet_audio.features import local_runner
from triplet_audio.features import records
from triplet_audio.features import shards

METRICS_NAMESPACE = "triplet_audio.features.extract"
"""Namespace of the Beam metrics (counters) the shard writers report (kept
from before the runners had modules of their own: dashboards use it)."""

_PLAN_PREFIX = ".beam-plan-"
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_DATAFLOW_EXTRA = "pip install 'triplet-audio[dataflow]'"


# ------------------------------------------------------------- the plan ---


def task_to_json(task):
    """One line of the plan file: an `shards.ShardTask` as JSON."""
    return json.dumps({
        "index": task.index,
        "num_shards": task.num_shards,
        "items": [shards.item_fields(i) for i in task.items],
        "pad_short": task.pad_short,
        "output_dir": task.output_dir,
        "fingerprint": task.fingerprint,
        "isolate_decoder": task.isolate_decoder,
        "decoder_timeout_seconds": task.decoder_timeout_seconds,
    }, sort_keys=True)


def task_from_json(line):
    """The `shards.ShardTask` of a plan line (inverse of `task_to_json`)."""
    d = json.loads(line)
    items = tuple(inputs.InputItem.from_extras(*fields)
                  for fields in d["items"])
    return shards.ShardTask(
        index=d["index"], num_shards=d["num_shards"], items=items,
        pad_short=d["pad_short"], output_dir=d["output_dir"],
        fingerprint=d["fingerprint"],
        # Absent from the plans of older versions: their defaults.
        isolate_decoder=d.get("isolate_decoder", True),
        decoder_timeout_seconds=d.get(
            "decoder_timeout_seconds",
            decode_worker.DEFAULT_TIMEOUT_SECONDS))


def _attempt_leftovers(task):
    """Temporary files of Beam attempts at `task` (see `_WriteShardFn`)."""
    found = []
    for path in (task.shard_path, task.summary_path):
        found += glob.glob(glob.escape(path) + ".*" + records.TEMP_SUFFIX)
    return found


def _remove_quietly(paths):
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


# ------------------------------------------------------------ the DoFn ---


class _WriteShardFn(beam.DoFn):
    """Writes the shard of one plan line; emits its index.

    Reports Beam counters (files per status, seconds of audio, shards) so
    that a runner's UI shows progress; the per-file outcome itself is in the
    shard's summary, like with the local runner.
    """

    def __init__(self):
        super().__init__()
        self._files = {
            status: beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                 "files_" + status)
            for status in (shards.STATUS_OK, shards.STATUS_FAILED,
                           shards.STATUS_SKIPPED)}
        self._audio_ms = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                      "audio_milliseconds")
        self._shards = beam.metrics.Metrics.counter(METRICS_NAMESPACE,
                                                    "shards")

    def _count(self, result):
        self._files[result.status].inc()
        self._audio_ms.inc(int(round(result.audio_seconds * 1000)))

    def process(self, line):
        task = task_from_json(line)
        # Unique per attempt: two attempts at one shard must not write into
        # the same temporary file (see the module docstring).
        suffix = ".%s%s" % (uuid.uuid4().hex, records.TEMP_SUFFIX)
        start = time.monotonic()
        try:
            summary = shards.write_shard(task, progress=self._count,
                                          temp_suffix=suffix)
        except BaseException:
            _remove_quietly([task.shard_path + suffix,
                             task.summary_path + suffix])
            raise
        self._shards.inc()
        logging.info("wrote %s: %d files, %d failed, %d skipped, %.1f s",
                     summary["shard"], summary["files"],
                     len(summary["failures"]), len(summary["skipped"]),
                     time.monotonic() - start)
        yield task.index


# ---------------------------------------------------------- the launcher ---


def _parse_options(options, **kwargs):
    """`options.get_all_options(**kwargs)`, an ExtractError if unparsable.

    Beam parses with argparse, which prints its whole usage (every option of
    every runner) and exits on a bad value; one line says more.
    """
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return options.get_all_options(**kwargs)
    except SystemExit as e:
        lines = stderr.getvalue().strip().splitlines() or ["unparsable"]
        raise inputs.ExtractError("beam_pipeline_options: %s" % (
            lines[-1].split("error: ", 1)[-1])) from e


def _one_line(error):
    text = " ".join(str(error).split())
    return text or type(error).__name__


class BeamShardWriter:
    """Writes `shards.ShardTask`s with a Beam pipeline (see module doc).

    Everything about the runner that can be checked before any output is
    written is checked on construction.
    """

    def __init__(self, config):
        """Checks the runner, its pipeline options and the paths.

        Args:
          config: `extract.ExtractConfig` whose `runner` is not 'local'.

        Raises:
          inputs.ExtractError: naming the field, for an unknown runner,
            options Beam rejects, or a URL where a path is needed.
        """
        for name in ("input", "output_dir"):
            value = getattr(config, name)
            if _URL.match(value):
                raise inputs.ExtractError(
                    "%s: %r: Beam runners read and write through paths that "
                    "every worker mounts (NFS, gcsfuse, ...), not URLs" %
                    (name, value))
        for option in config.beam_pipeline_options:
            if option.split("=", 1)[0] == "--runner":
                raise inputs.ExtractError(
                    "beam_pipeline_options: give the runner with --runner, "
                    "not in --beam_pipeline_options")
        self.runner_name = config.runner
        try:
            runner = beam_runner.create_runner(config.runner)
        except (ValueError, ImportError, AttributeError) as e:
            raise inputs.ExtractError(
                "runner: %r is neither %r nor a Beam runner (%s, or the "
                "module.Class of a PipelineRunner): %s" % (
                    config.runner, local_runner.LOCAL_RUNNER,
                    ", ".join(beam_options.StandardOptions.KNOWN_RUNNER_NAMES),
                    _one_line(e))) from e
        if "dataflow" in type(runner).__name__.lower():
            try:
                # What the Dataflow runner needs to submit a job; Beam only
                # finds out it is missing once the job is being submitted.
                importlib.import_module(
                    "apache_beam.runners.dataflow.internal.apiclient")
            except ImportError as e:
                raise inputs.ExtractError(
                    "runner: %s needs Beam's Google Cloud extras: %s" %
                    (config.runner, _DATAFLOW_EXTRA)) from e
        options = beam_options.PipelineOptions(
            list(config.beam_pipeline_options))
        unknown = sorted(
            set(_parse_options(options, retain_unknown_options=True)) -
            set(_parse_options(options)))
        if unknown:
            # Portable runners (Flink, Spark) take options the Python SDK
            # does not know, so these are passed on, not refused.
            logging.warning("beam_pipeline_options: not Python Beam options, "
                            "passed on to %s as they are (check the "
                            "spelling): %s", config.runner,
                            ", ".join(unknown))
        try:
            # The Pipeline constructor is where Beam validates the options
            # for the runner (Dataflow: project, region, temp_location, ...).
            beam.Pipeline(runner=runner, options=options)
        except ValueError as e:
            raise inputs.ExtractError(
                "beam_pipeline_options: %s rejects them: %s" %
                (config.runner, _one_line(e))) from e
        self._runner = runner
        self._options = options

    def write_shards(self, tasks):
        """Runs one Beam job that writes `tasks`; returns their summaries.

        Args:
          tasks: the `shards.ShardTask`s to write (none already committed).

        Returns:
          {task index: summary dict}, read back from the committed shards'
          summaries in the output directory.

        Raises:
          shards.RunnerError: the job failed, or finished without
            committing every shard where this process can see it.
        """
        if not tasks:
            return {}  # Nothing to do: no job is launched.
        # Workers may start in another working directory.
        output_dir = os.path.abspath(tasks[0].output_dir)
        tasks = [dataclasses.replace(t, output_dir=output_dir) for t in tasks]
        for task in tasks:  # Left by a killed run.
            _remove_quietly(_attempt_leftovers(task))
        plan_path = os.path.join(output_dir, "%s%s.jsonl" % (
            _PLAN_PREFIX, uuid.uuid4().hex))
        with open(plan_path, "w", encoding="utf-8") as f:
            for task in tasks:
                f.write(task_to_json(task) + "\n")
        logging.info("extracting %d files into %d shards with Beam runner %s",
                     sum(len(t.items) for t in tasks), len(tasks),
                     self.runner_name)
        try:
            self._run(plan_path)
        finally:
            _remove_quietly([plan_path])
            for task in tasks:
                _remove_quietly(_attempt_leftovers(task))
        summaries, missing = {}, []
        for task in tasks:
            summary = shards.load_finished_shard(task)
            if summary is None:
                missing.append(os.path.basename(task.shard_path))
            else:
                summaries[task.index] = summary
        if missing:
            raise shards.RunnerError(
                "runner: the %s job finished, but %d of %d shards are not in "
                "%s (%s%s): the workers must see --input and --output_dir at "
                "the same paths as this machine" % (
                    self.runner_name, len(missing), len(tasks), output_dir,
                    missing[0], ", ..." if len(missing) > 1 else ""))
        return summaries

    def _run(self, plan_path):
        """Builds and runs the pipeline over the plan file, to the end."""
        pipeline = beam.Pipeline(runner=self._runner, options=self._options)
        _ = (pipeline
             | "ReadPlan" >> beam.io.ReadFromText(plan_path)
             | "Spread" >> beam.Reshuffle()
             | "WriteShard" >> beam.ParDo(_WriteShardFn()))
        start = time.monotonic()
        try:
            result = pipeline.run()
            state = result.wait_until_finish()
        except Exception as e:  # pylint: disable=broad-except
            # A job fails with whatever its runner or a worker raised; the
            # caller reports one line; the traceback is for whoever digs.
            logging.warning("the %s job failed", self.runner_name,
                            exc_info=True)
            raise shards.RunnerError("runner: the %s job failed: %s" % (
                self.runner_name, _one_line(e))) from e
        state = state or result.state
        if state != beam_runner.PipelineState.DONE:
            raise shards.RunnerError("runner: the %s job ended %s" % (
                self.runner_name, state))
        logging.info("the %s job took %.1f s", self.runner_name,
                     time.monotonic() - start)
