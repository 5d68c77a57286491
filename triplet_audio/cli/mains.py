"""Entry points of the binaries in bin/: flags -> config -> one library call.

Each `*_main()` reads the parsed absl flags through `flagdefs`, calls the
library, and turns the errors a user can fix (bad flags, unusable input) into
a one-line message and a non-zero exit status instead of a traceback.
"""

import os
import sys

from absl import logging

# Binaries import this module before TensorFlow: hide TF's C++ INFO start-up
# lines (oneDNN, CUDA probing) unless the user asked for them.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")

from triplet_audio.cli import flagdefs
from triplet_audio.config import flagfiles

# Errors caused by the user's flags or input: reported in one line.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError,
               NotADirectoryError, PermissionError)


def reject_positional(argv):
    """Exits with a message if the command line had positional arguments."""
    if len(argv) > 1:
        sys.exit("error: unexpected positional arguments: %s (flags are "
                 "--name=value)" % " ".join(argv[1:]))


def run(fn):
    """Calls `fn()` and maps user errors to a one-line exit message.

    Args:
      fn: a no-argument callable returning an int exit status or None.

    Returns:
      fn's exit status (0 for None).
    """
    try:
        status = fn()
    except USER_ERRORS as e:
        logging.debug("user error", exc_info=True)
        sys.exit("error: %s" % e)
    return 0 if status is None else int(status)


def export_main():
    """bin/export."""
    from triplet_audio.serving import export
    args = flagdefs.export_args_from_flags()
    path = export.export_run(**args)
    logging.info("SavedModel written to %s", path)
    return 0


def train_main():
    """bin/train."""
    from triplet_audio.training import trainer
    config = flagdefs.train_config_from_flags()
    summary = trainer.train(config)
    return 0 if not summary.get("interrupted") else 3


def parse_flags(argv):
    """Flag parser for `app.run`: a bad flag ends in one line, status 1.

    absl's default parser prints the error and a second line of advice; the
    command-line contract promises one line. Flag files are expanded first
    (`config.flagfiles`), so that a flag file's includes are found from any
    working directory.

    Args:
      argv: the command line.

    Returns:
      The positional arguments left after parsing (argv[0] first).
    """
    from absl import flags  # pylint: disable=g-import-not-at-top
    try:
        return flags.FLAGS(flagfiles.expand_flagfiles(argv))
    except flags.Error as e:
        sys.exit("error: %s (see --help)" % " ".join(str(e).split()))


def embed_main():
    """bin/embed."""
    # Flags are checked before the import: a flag error need not wait for
    # TensorFlow.
    args = flagdefs.embed_args_from_flags()
    from triplet_audio.serving import embed
    summary = embed.embed_corpus(**args)
    if summary["failures"]:
        logging.warning("%d input file(s) could not be embedded; they are "
                        "listed in the output's metadata",
                        len(summary["failures"]))
    return 0


def evaluate_main():
    """bin/evaluate."""
    args = flagdefs.evaluate_args_from_flags()
    from triplet_audio.evaluation import metrics
    from triplet_audio.evaluation import report
    results = report.evaluate_to_dir(**args)
    probe = results.get("linear_probe") or {}
    logging.info("%s -> %s: %s", results["name"], args["output_dir"], ", ".join(
        ["%s mAP %.3f" % (part, results[part]["map"])
         for part in metrics.ALL_PARTS if part in results] +
        ["linear probe %s %s %.3f +- %.3f" % (
            model, probe["metric"], probe[model]["mean"], probe[model]["std"])
         for model in ("linear", "mlp_1x512") if model in probe]))
    return 0


def inspect_main():
    """bin/inspect_triplets."""
    args = flagdefs.inspect_args_from_flags()
    from triplet_audio.sampling import inspect_triplets
    inspect_triplets.inspect(**args)
    return 0


def data_service_main():
    """bin/data_service."""
    # Flags are checked before the import: a flag error need not wait for
    # TensorFlow.
    args = flagdefs.data_service_args_from_flags()
    from triplet_audio.sampling import data_service
    data_service.serve(**args)
    return 0
