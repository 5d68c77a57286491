"""Feature extraction: audio files -> sharded TFRecords of log-mel windows.

The library behind bin/extract_features, in modules a runner can reuse:

  inputs        discover_inputs: directory / glob / CSV -> sorted
                `InputItem`s and the class vocabulary
  datasets      discover: the same for any --input_format (AudioSet,
                FSD50K, ESC-50, UrbanSound8K as distributed, or auto)
  shards        the shard-writing core: files -> serialized records
                (`process_files`), one shard -> its .tfrecord and .json
                summary, renamed into place atomically (`write_shard`),
                resume (`load_finished_shard`)
  local_runner  shards written by worker processes on this machine
  beam_runner   shards written by an Apache Beam pipeline (the `beam` extra;
                imported only for a Beam runner)
  extract       (this module) run(config): plan, resume, write the pending
                shards with the runner `config.runner` names, then
                manifest.json; main(make_config): the binary's single call,
                returning its exit status

Output layout and record schema are those of `records`. File i of the sorted
input goes to shard i % num_shards. A shard is committed by renaming its
summary and then its TFRecord into place, so `records.list_shards` never sees
a partial shard, and a re-run skips every shard whose TFRecord and summary
exist for the same inputs. Shards, summaries and the manifest hold nothing
that depends on timing, worker count or runner, so a resumed run is
byte-identical to an uninterrupted one.
"""

from concurrent.futures import process as futures_process
import os
import re
import time

from absl import logging

from triplet_audio import constants as C
from triplet_audio.config import extract as extract_config
from triplet_audio.config import jsonio
from triplet_audio.config import options
from triplet_audio.features import datasets
from triplet_audio.features import decode_worker
from triplet_audio.features import inputs
from triplet_audio.features import local_runner
from triplet_audio.features import records
from triplet_audio.features import shards

LOCAL_RUNNER = options.LOCAL_RUNNER
PROGRESS_SECONDS = local_runner.PROGRESS_SECONDS


# The configuration's home is config/extract.py (no TensorFlow).
ExtractConfig = extract_config.ExtractConfig


# ----------------------------------------------------------------- run ---


def _prepare_output_dir(output_dir, tasks):
    """Creates `output_dir`, checks it is ours, and clears what must go."""
    try:
        os.makedirs(output_dir, exist_ok=True)
        probe = os.path.join(output_dir, records.MANIFEST_NAME +
                             records.TEMP_SUFFIX)
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise inputs.ExtractError("output_dir: cannot write to %s: %s" %
                                  (output_dir, e.strerror or e)) from e
    ours = {os.path.basename(t.shard_path) for t in tasks}
    foreign = sorted(
        os.path.basename(p) for p in
        inputs.expand_globs(output_dir,
                            directory_glob="*" + records.SHARD_SUFFIX)
        if os.path.basename(p) not in ours)
    if foreign:
        raise inputs.ExtractError(
            "output_dir: %s holds shards of another extraction (%s%s); use "
            "an empty directory or the same --num_shards" %
            (output_dir, foreign[0], ", ..." if len(foreign) > 1 else ""))
    # Leftovers of a killed run would be overwritten anyway; removing them
    # keeps the directory clean if this run has fewer shards to do.
    names = ours | {os.path.basename(t.summary_path) for t in tasks} | {
        records.MANIFEST_NAME}
    # name[.pid].incomplete[.incomplete]: a worker's temporary names
    # (`local_runner.worker_temp_suffix`); the second suffix is a summary's,
    # on its way through jsonio.write_json (`shards.write_shard`).
    stale_name = re.compile(r"(%s)(\.\d+)?(%s){1,2}$" % (
        "|".join(re.escape(n) for n in sorted(names)),
        re.escape(records.TEMP_SUFFIX)))
    for entry in sorted(os.listdir(output_dir)):
        if stale_name.match(entry):
            stale = os.path.join(output_dir, entry)
            logging.info("removing stale %s", stale)
            os.remove(stale)


def _manifest(config, classes, summaries, dataset_info=None):
    """The corpus manifest: deterministic, no timings, no output paths.

    A dataset layout adds "dataset" (`datasets.Discovery.info`: the layout
    read, its metadata files, listed / found / missing files) and the
    config's input_format; a plain input's manifest is as it always was.
    """
    keys = ("files", "recordings", "records", "windows", "audio_seconds")
    shard_entries = []
    for s in summaries:
        entry = {k: s[k] for k in keys}
        entry.update(name=s["shard"], failed=len(s["failures"]),
                     skipped=len(s["skipped"]))
        shard_entries.append(entry)
    totals = {k: sum(s[k] for s in summaries) for k in keys}
    totals["audio_seconds"] = round(totals["audio_seconds"], 6)
    failures = [f for s in summaries for f in s["failures"]]
    skipped = [f for s in summaries for f in s["skipped"]]
    warnings = [w for s in summaries for w in s["warnings"]]
    totals.update(failed=len(failures), skipped=len(skipped),
                  warnings=len(warnings))

    def by_path(entries):
        return sorted(entries, key=lambda e: e["path"])

    manifest = {
        "frontend": C.frontend_params(),
        "classes": list(classes),
        "num_shards": config.num_shards,
        "config": {"input": config.input, "pad_short": config.pad_short,
                   "extensions": list(config.extensions)},
        "shards": shard_entries,
        "totals": totals,
        "failures": by_path(failures),
        "skipped": by_path(skipped),
        "warnings": by_path(warnings),
    }
    if config.input_format != options.CSV_FORMAT:
        manifest["config"]["input_format"] = config.input_format
    if dataset_info:
        manifest["dataset"] = dataset_info
    return manifest


def _beam_module():
    """`beam_runner`, or an `inputs.ExtractError` saying how to install Beam."""
    try:
        # Imported only for a Beam runner: apache-beam is an optional extra
        # and importing it costs seconds.
        from triplet_audio.features import beam_runner  # pylint: disable=g-import-not-at-top
    except ModuleNotFoundError as e:
        if (e.name or "").split(".")[0] != "apache_beam":
            raise
        raise inputs.ExtractError(
            "runner: Beam runners need Apache Beam, which is not installed: "
            "pip install 'triplet-audio[beam]' (or use --runner=%s)" %
            LOCAL_RUNNER) from e
    return beam_runner


def run(config, progress_seconds=PROGRESS_SECONDS):
    """Extracts a corpus, resuming a killed run.

    Shards are written by worker processes on this machine, or with
    `config.runner` naming a Beam runner, by a Beam pipeline
    (`beam_runner.BeamShardWriter`); planning, resume and the manifest are the
    same for both, and so are the bytes written.

    Args:
      config: `ExtractConfig`.
      progress_seconds: interval between progress log lines.

    Returns:
      the manifest dict (as written to manifest.json), plus
      `resumed_shards`: how many shards an earlier run had completed;
      `seconds`: wall time of the extraction; `startup_seconds`: of which
      before the first file was done (worker start-up, TF tracing);
      `busy_seconds`: time workers spent writing shards, summed over
      workers. The timings stay out of manifest.json, which must not depend
      on them; the last two are None with a Beam runner, whose workers are
      out of sight.

    Raises:
      inputs.ExtractError: naming the field, for an unusable runner, input
        or output directory.
      shards.RunnerError: the Beam job failed, or a shard's worker process
        died `local_runner.MAX_WORKER_DEATHS` times.
      shards.ShardWriteError: a shard could not be written (disk full, ...):
        it names the shard and the cause.
    """
    beam_writer = None
    if config.runner != LOCAL_RUNNER:
        # Checked before anything is written: a typo in the runner name
        # must not leave an output directory behind.
        beam_writer = _beam_module().BeamShardWriter(config)
    found = datasets.discover(config.input, config.extensions,
                              config.input_format)
    items, classes = found.items, found.classes
    tasks = shards.make_shard_tasks(items, config.num_shards,
                                    config.pad_short, config.output_dir,
                                    config.isolate_decoder,
                                    config.decoder_timeout_seconds)
    _prepare_output_dir(config.output_dir, tasks)
    summaries, pending = {}, []
    for task in tasks:
        summary = shards.load_finished_shard(task)
        if summary is None:
            pending.append(task)
        else:
            summaries[task.index] = summary
    if summaries:
        logging.info("resuming: %d of %d shards already complete",
                     len(summaries), len(tasks))
    for task in pending:
        # A shard of other inputs (or a summary left by a kill between the
        # two renames) must not stay visible while its replacement is made.
        for path in (task.shard_path, task.summary_path):
            if os.path.exists(path):
                logging.warning("replacing %s (not from these inputs, or "
                                "incomplete)", path)
                os.remove(path)
    resumed = dict(resumed_shards=len(tasks) - len(pending))
    if beam_writer is not None:
        start = time.monotonic()
        summaries.update(beam_writer.write_shards(pending))
        return _finish(config, classes, tasks, summaries, dict(
            resumed, seconds=time.monotonic() - start, startup_seconds=None,
            busy_seconds=None), found.info)
    workers = min(config.resolved_workers, len(pending))
    logging.info("extracting %d files into %d shards (%d to do) with %d "
                 "worker(s)", len(items), len(tasks), len(pending), workers)
    written, timings = local_runner.write_shards(pending, workers,
                                                 progress_seconds)
    summaries.update(written)
    return _finish(config, classes, tasks, summaries, dict(resumed, **timings),
                   found.info)


def _finish(config, classes, tasks, summaries, timings, dataset_info=None):
    """Writes manifest.json and returns it merged with `timings`."""
    manifest = _manifest(config, classes,
                         [summaries[t.index] for t in tasks], dataset_info)
    jsonio.write_json(os.path.join(config.output_dir, records.MANIFEST_NAME),
                      manifest, indent=shards.SUMMARY_INDENT)
    totals = manifest["totals"]
    # Each failure was logged as it happened; manifest.json lists them all.
    logging.info(
        "extracted %d/%d files (%d records, %d windows, %.1f s of audio); "
        "%d failed, %d skipped (see %s) -> %s", totals["recordings"],
        totals["files"], totals["records"], totals["windows"],
        totals["audio_seconds"], totals["failed"], totals["skipped"],
        records.MANIFEST_NAME, config.output_dir)
    if dataset_info:
        logging.info("%s: %d of %d listed files were present, %d missing "
                     "(listed in %s)", dataset_info["layout"],
                     dataset_info["found"], dataset_info["listed"],
                     dataset_info["missing"], records.MANIFEST_NAME)
    return dict(manifest, **timings)


def exit_code(summary, strict):
    """The binary's exit status for a finished run.

    Args:
      summary: what `run` returned.
      strict: whether any failed file fails the run.

    Returns:
      0 on success, 1 if no file was extracted or (strict) any file failed.
    """
    totals = summary["totals"]
    if not totals["recordings"]:
        logging.error("no file could be extracted (%d failed, %d skipped)",
                      totals["failed"], totals["skipped"])
        return 1
    if strict and totals["failed"]:
        logging.error("--strict: %d of %d files failed", totals["failed"],
                      totals["files"])
        return 1
    return 0


def main(make_config):
    """Entry point of bin/extract_features.

    Args:
      make_config: zero-argument callable returning an `ExtractConfig`
        (`flagdefs.extract_config_from_flags`). It is called here so that an
        invalid setting ends like any other unusable input: one logged line
        naming the flag, and a non-zero status.

    Returns:
      process exit status: 0 success, 1 extraction failed (see `exit_code`),
      2 unusable flags, input or output directory.
    """
    try:
        config = make_config()
    except ValueError as e:
        logging.error("%s", e)
        return 2
    try:
        summary = run(config)
    except (inputs.ExtractError, OSError) as e:
        logging.error("%s", e)
        return 2
    except futures_process.BrokenProcessPool as e:
        logging.error("a worker process died (out of memory?): %s", e)
        return 1
    except shards.RunnerError as e:
        logging.error("%s", e)
        return 1
    except decode_worker.DecoderStartError as e:
        logging.error("%s; --noisolate_decoder decodes in this process "
                      "instead (a decoder crash then ends the job)", e)
        return 1
    return exit_code(summary, config.strict)
