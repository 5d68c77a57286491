"""What bin/extract_features extracts and how: `ExtractConfig`.

Each field's default, help and bounds are written once here; the binary's
flags are derived from them (`fields.define_flags`). No TensorFlow.
"""

import dataclasses
import os

import numpy as np

from triplet_audio.config import fields
from triplet_audio.config import options

DECODER_TIMEOUT_SECONDS = 60.0
"""Default of `ExtractConfig.decoder_timeout_seconds`: one block of audio
decodes in milliseconds; this leaves room for a cold network file system."""


@dataclasses.dataclass(frozen=True)
class ExtractConfig:
    """What to extract and how; validated on construction.

    Field names are the flag names of bin/extract_features, so a ValueError
    naming a field names the flag too.

    Attributes:
      input: a directory (searched recursively for `extensions`), a glob, or
        a CSV file `path,labels[,split]` (labels ';'-separated class names,
        header row optional, relative paths relative to the CSV); for a
        dataset `input_format`, the dataset's root or one metadata file.
      input_format: one of `options.INPUT_FORMATS` (`features.datasets`).
      output_dir: corpus directory for shards, summaries and manifest.json.
      num_shards: number of TFRecord shards (>= 1).
      workers: worker processes; 0 means one per CPU core.
      strict: whether any failed file makes the run fail (see `exit_code`).
      pad_short: zero-pad clips shorter than one window to one window
        (True) or skip them (False).
      extensions: file extensions picked up from a directory input, lower
        case without dots; a comma-separated string is accepted.
      runner: 'local' (worker processes on this machine), or the name of an
        Apache Beam runner (DirectRunner, DataflowRunner, FlinkRunner,
        SparkRunner, ...; needs the `beam` extra, see `features.beam_runner`).
      beam_pipeline_options: Beam pipeline options for a Beam runner, each
        '--name=value' (or '--flag'); a comma-separated string is accepted.
        Must be empty for the local runner.
      isolate_decoder: decode audio in a child process that is restarted
        when a decoder crashes or hangs on a corrupt file, failing that file
        alone (True), or in the extracting process (False); the records are
        the same either way.
      decoder_timeout_seconds: with isolate_decoder, how long the decoder
        may send nothing before it is killed and the file failed.
    """

    input: str = fields.setting(
        None, "Audio to extract: a directory (searched recursively), a glob, "
        "or a CSV with columns path,labels[,split] (labels ';'-separated "
        "class names; relative paths are relative to the CSV); with a "
        "dataset --input_format, the dataset's root folder (or one of its "
        "metadata files, to read that part alone).", kind="str")
    output_dir: str = fields.setting(
        None, "Corpus directory to write shards and manifest.json to.",
        kind="str")
    num_shards: int = fields.setting(8, "Number of TFRecord shards.",
                                     lower_bound=1)
    workers: int = fields.setting(
        0, "Worker processes; 0 uses every core.", lower_bound=0)
    strict: bool = fields.setting(
        False, "Exit non-zero if any input file fails (default: only if "
        "none succeed).")
    pad_short: bool = fields.setting(
        True, "Zero-pad clips shorter than one 0.96 s window to one window; "
        "--nopad_short drops them instead.")
    extensions: tuple = fields.setting(
        options.AUDIO_EXTENSIONS, "Comma-separated file extensions picked up "
        "from a directory input.", kind="str", format=",".join)
    runner: str = fields.setting(
        options.LOCAL_RUNNER, "'local' (multiprocessing on this machine) or "
        "an Apache Beam runner name (DirectRunner, DataflowRunner, "
        "FlinkRunner, SparkRunner, ...; needs pip install "
        "'triplet-audio[beam]').")
    beam_pipeline_options: tuple = fields.setting(
        (), "Beam pipeline options for a Beam --runner, comma-separated, "
        "e.g. '--project=P,--region=R,--temp_location=gs://B/tmp,"
        "--setup_file=./setup.py'. Quote an item that holds a comma (CSV "
        "rules).", kind="list")
    input_format: str = fields.setting(
        options.CSV_FORMAT, "How --input is laid out: csv (a directory, glob "
        "or path,labels[,split] CSV), a dataset as distributed (audioset: "
        "*_segments.csv + class_labels_indices.csv + audio named by YouTube "
        "id; fsd50k: FSD50K.ground_truth/ + FSD50K.{dev,eval}_audio/; esc50: "
        "meta/esc50.csv + audio/; urbansound8k: metadata/UrbanSound8K.csv + "
        "audio/foldN/), or auto (detected from the metadata files).",
        choices=options.INPUT_FORMATS)
    isolate_decoder: bool = fields.setting(
        True, "Decode audio in a separate process, restarted when a decoder "
        "crashes or hangs on a corrupt file, so that such a file fails alone "
        "instead of the whole run; --noisolate_decoder decodes in the "
        "extracting processes (the same records).")
    decoder_timeout_seconds: float = fields.setting(
        DECODER_TIMEOUT_SECONDS, "With --isolate_decoder: seconds the "
        "decoder may go without producing audio before it is killed and the "
        "file counted as failed.", lower_bound=0.001)

    def __post_init__(self):
        for name in ("input", "output_dir", "runner"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValueError("%s: must be a non-empty string, got %r" %
                                 (name, value))
        if self.input_format not in options.INPUT_FORMATS:
            raise ValueError("input_format: must be one of %s, got %r" % (
                ", ".join(options.INPUT_FORMATS), self.input_format))
        for name, lowest in (("num_shards", 1), ("workers", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(
                    value, (int, np.integer)) or value < lowest:
                raise ValueError("%s: must be an integer >= %d, got %r" %
                                 (name, lowest, value))
        extensions = self.extensions
        if isinstance(extensions, str):
            extensions = extensions.split(",")
        extensions = tuple(e.strip().lstrip(".").lower() for e in extensions
                           if e.strip().lstrip("."))
        if not extensions:
            raise ValueError("extensions: need at least one file extension, "
                             "got %r" % (self.extensions,))
        beam_options = self.beam_pipeline_options
        if isinstance(beam_options, str):
            beam_options = beam_options.split(",")
        beam_options = tuple(o.strip() for o in beam_options if o.strip())
        for option in beam_options:
            if not option.startswith("--"):
                raise ValueError("beam_pipeline_options: expected "
                                 "--name=value items, got %r" % option)
        if beam_options and self.runner == options.LOCAL_RUNNER:
            # Most likely a forgotten --runner: say so rather than ignore them.
            raise ValueError("beam_pipeline_options: only used with a Beam "
                             "--runner, not %r" % options.LOCAL_RUNNER)
        # Frozen dataclass: normalised values are set through object.
        object.__setattr__(self, "beam_pipeline_options", beam_options)
        object.__setattr__(self, "extensions", extensions)
        object.__setattr__(self, "num_shards", int(self.num_shards))
        object.__setattr__(self, "workers", int(self.workers))
        timeout = self.decoder_timeout_seconds
        if isinstance(timeout, bool) or not isinstance(
                timeout, (int, float, np.integer, np.floating)) or not (
                    0 < timeout < float("inf")):
            raise ValueError("decoder_timeout_seconds: must be a positive "
                             "number of seconds, got %r" % (timeout,))
        object.__setattr__(self, "decoder_timeout_seconds", float(timeout))

    @property
    def resolved_workers(self):
        """`workers`, with 0 replaced by the number of CPU cores."""
        return self.workers or os.cpu_count() or 1
