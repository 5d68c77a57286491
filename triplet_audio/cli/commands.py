"""The command-line programs: one function per binary, and `triplet-audio`.

An installed package provides each binary as a console command named
`triplet-audio-NAME` (setup.py's entry points; `bin/extract_features` is
`triplet-audio-extract-features`), and `triplet-audio NAME [flags]` runs the
same. A checkout's `bin/NAME` calls the same function, so both are one code
path: same flags, same --help, same exit statuses.

Each function defines its binary's flags (the `flagdefs.define_*` groups it
needs), then hands over to `absl.app.run` with `mains.parse_flags`, which
exits with a one-line error on a bad flag and resolves a flag file's includes
against the including file's directory. Its docstring is the binary's --help
text. It never returns: `app.run` exits with the binary's status.
"""

import inspect
import sys

from absl import app
from absl import flags

from triplet_audio.cli import flagdefs
from triplet_audio.cli import mains

FLAGS = flags.FLAGS


# bin/NAME -> (the flagdefs groups it defines, the flags it requires).
FLAG_GROUPS = {
    "extract_features": ((flagdefs.define_extract_flags,),
                         ("input", "output_dir")),
    "train": ((flagdefs.define_sampler_flags, flagdefs.define_train_flags),
              ()),
    "export": ((flagdefs.define_export_flags,), ("model_dir", "export_dir")),
    "embed": ((flagdefs.define_embed_flags,), ()),
    "evaluate": ((flagdefs.define_evaluate_flags,), ()),
    "demo": ((flagdefs.define_demo_flags,), ()),
    "inspect_triplets": ((flagdefs.define_sampler_flags,
                          flagdefs.define_inspect_flags), ()),
    "data_service": ((flagdefs.define_data_service_flags,), ()),
    "make_corpus": ((flagdefs.define_corpus_flags,), ()),
    "index": ((flagdefs.define_index_flags,), ()),
    "search": ((flagdefs.define_search_flags,), ()),
    "train_classifier": ((flagdefs.define_classifier_flags,), ()),
}


def define_flags(name):
    """Defines bin/NAME's flags, as its command does before parsing.

    Tests parse a binary's command line with it (then `mains.parse_flags`).
    """
    groups, required = FLAG_GROUPS[name]
    for define in groups:
        define()
    if required:
        flags.mark_flags_as_required(list(required))


def _run(command, body):
    """Parses flags and exits with `body`'s status (`mains.run`'s errors)."""
    def main(argv):
        mains.reject_positional(argv)
        return mains.run(body)
    _run_main(command, main)


def _run_main(command, main):
    """`app.run(main)` with `command`'s docstring and flags as its --help."""
    # absl's --help prints __main__'s docstring (the console-script wrapper
    # has none) and the key flags of the module named sys.argv[0]. The
    # flags are defined in the package (flagdefs and the modules it calls),
    # so declare them all key to the program.
    sys.modules["__main__"].__doc__ = inspect.cleandoc(command.__doc__) + "\n"
    modules = set(FLAGS.flags_by_module_dict()) | {flagdefs.__name__}
    for module in sorted(modules):
        if module.split(".")[0] == __name__.split(".")[0]:
            for flag in FLAGS.get_key_flags_for_module(module):
                FLAGS.register_key_flag_for_module(sys.argv[0], flag)
    app.run(main, flags_parser=mains.parse_flags)


def extract_features():
    """Extracts log-mel windows from audio files into sharded TFRecords.

      bin/extract_features --input=DIR|GLOB|CSV --output_dir=DIR
          [--num_shards=N] [--workers=N] [--strict] [--nopad_short]
          [--decoder_timeout_seconds=S] [--noisolate_decoder]
      bin/extract_features --input=/data/ESC-50-master --input_format=auto
          --output_dir=DIR

    --input_format=audioset|fsd50k|esc50|urbansound8k reads a dataset as
    distributed (its labels, split or fold; files it lists but the folder
    lacks are listed in the manifest, not an error); auto detects it.
    Writes shard-NNNNN-of-MMMMM.tfrecord (+ .json summaries) and
    manifest.json to --output_dir. Re-running after an interruption finishes
    the missing shards. Audio is decoded in a child process that is
    restarted, so a decoder crash or hang fails one file, not the job.
    Exit status: 0 success, 1 nothing extracted (or
    --strict and a file failed), 2 unusable flags, input or output directory.
    """
    define_flags("extract_features")

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError("unexpected arguments: %s"
                                 % " ".join(argv[1:]))
        # Imported after flag parsing, so --help and flag errors skip loading
        # TensorFlow. extract.main maps errors to the statuses above.
        from triplet_audio.features import extract  # pylint: disable=g-import-not-at-top
        return extract.main(flagdefs.extract_config_from_flags)
    _run_main(extract_features, main)


def train():
    r"""Trains a triplet embedding on a TFRecord corpus.

      bin/train --flagfile=flags/proximity.cfg --train_data=/data/corpus \
          --model_dir=runs/proximity

    Rerunning the same command resumes from the last checkpoint in --model_dir.
    SIGTERM / SIGINT write a checkpoint and exit (status 3).
    """
    define_flags("train")
    _run(train, mains.train_main)


def export():
    """Exports a training run to a SavedModel (waveform -> embeddings).

      bin/export --model_dir=runs/proximity --export_dir=exports/proximity
          [--window_hop_seconds=0.96] [--tflite [--tflite_variants=...]]

    Reads the run's config.json; nothing needs repeating. --tflite also
    writes TFLite models (16 kHz waveform in, log-mel front end inside).
    """
    define_flags("export")
    _run(export, mains.export_main)


def embed():
    """Embeds a corpus with an exported model, or writes the log-mel baseline.

      bin/embed --input=features/eval --saved_model=exports/proximity
          --output=emb/proximity/eval.npz
      bin/embed --input=features/eval --representation=logmel
          --output=emb/logmel/eval.npz

    --input is a TFRecord corpus (bin/extract_features) or audio files (a
    directory, glob or CSV path,labels[,split], or a dataset's root with
    --input_format, as for bin/extract_features); unreadable audio files are
    listed in the output's metadata, the rest embedded. The output is what
    bin/evaluate reads.
    """
    define_flags("embed")
    _run(embed, mains.embed_main)


def evaluate():
    """Evaluates one representation the way the paper does.

      bin/evaluate --train=emb/proximity/train.npz --eval=emb/proximity/eval.npz
          --output_dir=results/proximity [--name=proximity]

    Runs QbE retrieval, the 1x512 and 2x512 classifiers and few-shot
    classification, and writes results.json, report.md (Table 1 / Table 2
    rows), per-class AP and projection plots, and TensorBoard projector TSVs
    to --output_dir. For a small corpus pass e.g. --qbe_min_count=10.

      bin/evaluate --train=emb/esc50.npz --protocol=linear_probe
          --output_dir=results/esc50

    --protocol=linear_probe (or both) adds the linear probe: a linear
    classifier and a 1x512 MLP on clip embeddings, cross-validated over the
    dataset's folds or scored on its eval split (--eval optional).
    """
    define_flags("evaluate")
    _run(evaluate, mains.evaluate_main)


def demo():
    """Runs the whole path on the synthetic corpus and writes Table 1.

      bin/demo --flagfile=flags/demo_pipeline.cfg --output_dir=demo_run

    Generates the labelled corpus, extracts features, trains the supervised
    topline and each sampler (training settings: --train_flagfile, by default
    flags/demo.cfg), exports, embeds, evaluates each and the log-mel baseline,
    and writes report.md / report.json (Table 1 with recovery, Table 2, plots)
    to --output_dir, running bin/make_corpus, bin/extract_features, bin/train,
    bin/export, bin/embed and bin/evaluate as a user would. Each stage's log is
    --output_dir/logs/STAGE.log. Rerunning the same command skips finished
    stages and continues an interrupted one. The final tables go to stdout.
    """
    from triplet_audio.demo import runner  # pylint: disable=g-import-not-at-top
    define_flags("demo")

    def body():
        out = runner.run_demo(flagdefs.demo_config_from_flags())
        if "markdown" in out:  # Not with --dry_run.
            # The binary's result, for the user and for shell pipes: the
            # tables.
            print(out["markdown"], end="")
        return 0

    def main(argv):
        mains.reject_positional(argv)
        try:
            return mains.run(body)
        except runner.StageError as e:
            sys.exit("error: %s" % e)
    _run_main(demo, main)


def inspect_triplets():
    r"""Writes a PNG grid of sampled triplets (anchor / positive / negative).

      bin/inspect_triplets --train_data=/data/corpus --sampler=translation \
          --output=translation.png

    Shows what a sampler does to the data before spending a training run on it.
    """
    define_flags("inspect_triplets")
    _run(inspect_triplets, mains.inspect_main)


def data_service():
    """Serves training input pipelines: a tf.data service dispatcher or worker.

      bin/data_service --role=dispatcher --port=5050 [--work_dir=DIR --fault_tolerant]
      bin/data_service --role=worker --dispatcher=HOST:5050 --port=5051
      bin/train ... --tf_data_service=grpc://HOST:5050

    Blocks until SIGINT / SIGTERM, then stops the servers and exits 0. Logs the
    address each server listens on. Workers read the corpus at the path the
    trainer names, so give them the same file system.
    """
    define_flags("data_service")
    _run(data_service, mains.data_service_main)


def make_corpus():
    """Writes the embedded synthetic labelled corpus (WAVs + labels CSVs).

      bin/make_corpus --output_dir=/tmp/corpus [--num_train=240] [--num_eval=120]
          [--seed=0] [--duration_s=10] [--num_classes=0] [--workers=1]
          [--corpus_version=2]

    Then extract each split on its own, e.g.
      bin/extract_features --input=/tmp/corpus/train.csv --output_dir=...
    """
    from absl import logging  # pylint: disable=g-import-not-at-top
    from triplet_audio.demo import synthetic  # pylint: disable=g-import-not-at-top
    define_flags("make_corpus")

    def main(argv):
        if len(argv) > 1:
            raise app.UsageError(
                f"unexpected arguments: {' '.join(argv[1:])}")
        try:
            summary = synthetic.generate_corpus(
                **flagdefs.corpus_config_from_flags())
        except (ValueError, OSError) as err:
            sys.exit(f"make_corpus: {err}")
        logging.info("Labels: %s (train: %s, eval: %s)", summary["labels_csv"],
                     summary["train_csv"], summary["eval_csv"])
    _run_main(make_corpus, main)


def index():
    """Builds a nearest-neighbour index of embeddings, for bin/search.

      bin/index --embeddings=emb/proximity/eval.npz --output=index/proximity
          [--level=window|recording] [--index_type=auto|exact|hnsw|ivfpq]
      bin/index --input=/data/audio --saved_model=exports/proximity
          --output=index/proximity
      bin/index --embeddings=emb/proximity/new.npz --output=index/proximity
          --add

    --embeddings is the --output PATH given to bin/embed. Each vector keeps
    its recording, start time, labels and audio file; the index records the
    export that made the vectors, and bin/search refuses queries embedded by
    another. --add adds the recordings the index does not hold yet, without
    rebuilding it. Writes are atomic: a killed build leaves the old index.
    """
    define_flags("index")

    def body():
        config = flagdefs.index_config_from_flags()
        from triplet_audio.search import build  # pylint: disable=g-import-not-at-top
        build.build_index(config)
        return 0
    _run(index, body)


def search():
    """Finds the recordings that sound like a query, in an index.

      bin/search --index=index/proximity --saved_model=exports/proximity
          --query=clip.wav [--k=10] [--format=table|json|csv]
      bin/search --index=index/proximity --recording=ID [--label=dog]
      bin/search --index=index/proximity --serve   # http://127.0.0.1:8000/

    A query is an audio file (or --query_start / --query_end seconds of it),
    embedded with the index's export, or a recording of the index. Each hit
    is a recording, once, with its best-matching moments; the results go to
    stdout. --serve serves a local web page instead (until Ctrl-C).
    """
    define_flags("search")

    def body():
        config = flagdefs.search_config_from_flags()
        # pylint: disable=g-import-not-at-top
        from triplet_audio.search import query
        from triplet_audio.search import web
        # pylint: enable=g-import-not-at-top
        if config.serve:
            web.run_serve(config)
        else:
            # The binary's result, for the user and for shell pipes.
            sys.stdout.write(query.run_search(config))
        return 0
    _run(search, body)


def train_classifier():
    """Trains a classifier head on an export's embeddings and ships it.

      bin/train_classifier --saved_model=exports/proximity
          --input=/data/ESC-50-master --input_format=esc50
          --export_dir=classifiers/esc50 [--head=linear|mlp_1x512]

    Embeds the labelled corpus with the export (or reads --embeddings),
    scores the head held out as bin/evaluate --protocol=linear_probe does
    (the dataset's folds or its eval split), refits it on every labelled
    clip and writes --export_dir/saved_model: a 16 kHz waveform in,
    window_scores, clip_scores and start_times out, the class names in its
    class_names signature and in metadata.json; results.json holds the
    held-out score.
    """
    define_flags("train_classifier")

    def body():
        args = flagdefs.classifier_args_from_flags()
        from triplet_audio.evaluation import classifier  # pylint: disable=g-import-not-at-top
        classifier.train_and_export(**args)
        return 0
    _run(train_classifier, body)


def main():
    """triplet-audio COMMAND [flags]: runs triplet-audio-COMMAND."""
    program = sys.argv[0]
    names = [n.replace("_", "-") for n in COMMANDS]
    usage = ("usage: triplet-audio COMMAND [--flag=value ...]\n"
             "commands: %s\n"
             "`triplet-audio COMMAND --help` lists a command's flags; "
             "`triplet-audio-COMMAND` is the same program.\n"
             % ", ".join(names))
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help", "help"):
        asked = len(sys.argv) >= 2
        (sys.stdout if asked else sys.stderr).write(usage)
        sys.exit(0 if asked else 1)
    name = sys.argv[1].replace("-", "_")
    if name not in COMMANDS:
        sys.exit("error: unknown command %r (commands: %s)"
                 % (sys.argv[1], ", ".join(names)))
    sys.argv[:2] = ["%s %s" % (program, sys.argv[1])]
    COMMANDS[name]()


# bin/NAME -> the function that runs it; setup.py installs each as
# triplet-audio-NAME ("-" for "_"), and `triplet-audio NAME` runs it too.
COMMANDS = {
    "extract_features": extract_features,
    "train": train,
    "export": export,
    "embed": embed,
    "evaluate": evaluate,
    "demo": demo,
    "inspect_triplets": inspect_triplets,
    "data_service": data_service,
    "make_corpus": make_corpus,
    "index": index,
    "search": search,
    "train_classifier": train_classifier,
}
