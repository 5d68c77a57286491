"""Every command-line flag of every binary, defined once.

Binaries call the `define_*` functions they need, then hand `absl.flags.FLAGS`
to one library entry point. Flags are read one way only: `FLAGS.name` inside
the `*_config_from_flags` functions, which turn them into validated config
dataclasses. Library code never reads flags.

Flag names follow the command-line contract in ../shared/DESIGN.md.
"""

from absl import flags

FLAGS = flags.FLAGS

SAMPLERS = ("noise", "translation", "mixing", "proximity", "supervised",
            "joint")
UNSUPERVISED_SAMPLERS = ("noise", "translation", "mixing", "proximity")


def _once(fn):
    """Makes a define_* function idempotent (binaries may share groups)."""
    done = []

    def wrapper():
        if not done:
            fn()
            done.append(True)
    wrapper.__doc__ = fn.__doc__
    wrapper.__name__ = fn.__name__
    return wrapper


@_once
def define_extract_flags():
    """Flags of bin/extract_features."""
    flags.DEFINE_string(
        "input", None,
        "Audio to extract: a directory (searched recursively), a glob, or a CSV "
        "with columns path,labels[,split] (labels ';'-separated class names; "
        "relative paths are relative to the CSV).")
    flags.DEFINE_string("output_dir", None,
                        "Corpus directory to write shards and manifest.json to.")
    flags.DEFINE_integer("num_shards", 8, "Number of TFRecord shards.",
                         lower_bound=1)
    flags.DEFINE_integer("workers", 0,
                         "Worker processes; 0 uses every core.", lower_bound=0)
    flags.DEFINE_boolean(
        "strict", False,
        "Exit non-zero if any input file fails (default: only if none succeed).")
    flags.DEFINE_boolean(
        "pad_short", True,
        "Zero-pad clips shorter than one 0.96 s window to one window; "
        "--nopad_short drops them instead.")
    flags.DEFINE_string(
        "runner", "local",
        "'local' (multiprocessing on this machine) or an Apache Beam runner "
        "name (DirectRunner, DataflowRunner, ...).")
    flags.DEFINE_string(
        "extensions", "wav,flac,ogg,oga,mp3,aiff,aif,au,caf,w64,rf64",
        "Comma-separated file extensions picked up from a directory input.")
