"""What bin/index does: embeddings (or a corpus and an export) -> an index.

`build_index(config)` reads the embeddings bin/embed wrote (or embeds a
corpus / audio folder with an export first, as bin/embed would, into a
temporary file), works out which export made them
(`exports.identity_of_embeddings`) and where each recording's audio file is
(`source_paths`), and writes a new index to `--output`, or adds the
recordings it does not hold yet to the index there (`--add`). Writes are
atomic (`index.SoundIndex.save`).
"""

import os
import tempfile

from absl import logging

from triplet_audio.config import jsonio
from triplet_audio.config import search as search_config
from triplet_audio.features import inputs
from triplet_audio.search import exports
from triplet_audio.search import index as index_lib
from triplet_audio.serving import embeddings_io

MANIFEST_NAME = "manifest.json"


def source_paths(emb_set):
    """{recording id: audio file} of an `EmbeddingSet` bin/embed wrote.

    bin/embed records its input (`metadata["source"]`): for audio input
    (a folder, glob or CSV) the files are listed again the way bin/embed
    listed them; for a TFRecord corpus, the audio input its manifest.json
    records. Recordings whose file cannot be found are left out (searching
    works without it; the web page then cannot play that recording).

    Args:
      emb_set: an `embeddings_io.EmbeddingSet`.

    Returns:
      dict {recording id: absolute path of an existing file}.
    """
    meta = emb_set.metadata or {}
    source = meta.get("source")
    spec = source
    if meta.get("input_kind") == "tfrecord" and source:
        spec = None
        manifest = os.path.join(source, MANIFEST_NAME)
        if os.path.isdir(source) and os.path.isfile(manifest):
            config = jsonio.read_json(manifest).get("config") or {}
            if config.get("input_format") in (None, "csv"):
                spec = config.get("input")
    found = {}
    if spec:
        try:
            items, _ = inputs.discover_inputs(spec)
            found = {item.recording_id: item.path for item in items
                     if os.path.isfile(item.path)}
        except (ValueError, OSError) as e:
            logging.warning("cannot list the audio files of %s (%s)", spec, e)
    wanted = set(emb_set.segment_ids.tolist())
    found = {k: os.path.abspath(v) for k, v in found.items() if k in wanted}
    if len(found) < len(wanted):
        logging.warning(
            "%d of %d recordings of %s have no audio file found (input %s): "
            "they are searchable, but the web page cannot play them",
            len(wanted) - len(found), len(wanted), emb_set.source, spec)
    return found


def _embed_input(config, directory):
    """Embeds `config.input` with `config.saved_model`; returns the path."""
    from triplet_audio.serving import embed  # pylint: disable=g-import-not-at-top
    path = os.path.join(directory, "embeddings.npz")
    embed.embed_corpus(config.input, path, saved_model=config.saved_model)
    return path


def build_index(config):
    """Builds (or adds to) the index in `config.output`.

    Args:
      config: an `IndexConfig` (validated, with `require_inputs`).

    Returns:
      a summary dict: output, level, index_type, vectors, recordings,
      added, skipped, seconds.

    Raises:
      FileExistsError: `output` holds an index and neither add nor
        overwrite was asked for.
      FileNotFoundError, ValueError: unusable input (one-line reasons).
    """
    config.require_inputs()
    existing = index_lib.exists(config.output)
    if existing and not (config.add or config.overwrite):
        raise FileExistsError(
            "%s already holds an index; pass --add to add recordings to it, "
            "or --overwrite to rebuild it" % config.output)
    if config.add and not existing:
        logging.info("%s holds no index yet: building one", config.output)
    with tempfile.TemporaryDirectory(prefix="triplet_audio_index_") as tmp:
        path = config.embeddings
        if config.input:
            path = _embed_input(config, tmp)
        emb_set = embeddings_io.read_embeddings(path)
        identity = exports.identity_of_embeddings(
            emb_set, None if config.input else config.saved_model)
        paths = source_paths(emb_set)
        source = os.path.abspath(config.input or config.embeddings)
        if config.add and existing:
            index = index_lib.SoundIndex.load(config.output, mmap=False)
            exports.check_same(index.identity, identity, config.output)
            added, skipped = index.add(emb_set, paths, source=source)
        else:
            index = index_lib.SoundIndex.build(
                emb_set, identity, level=config.level,
                index_type=config.index_type,
                params=config.index_params(), source_paths=paths,
                exact_max_vectors=config.exact_max_vectors, seed=config.seed,
                source=source)
            index.info["config"] = jsonio.to_jsonable(config)
            added, skipped = emb_set.num_segments, 0
    if added or not existing or config.overwrite:
        index.save(config.output)
    if (index.index_type == search_config.EXACT and
            index.num_vectors > config.exact_max_vectors):
        logging.warning(
            "the exact index now holds %d vectors (more than %d): queries "
            "slow down linearly; consider rebuilding with --index_type=hnsw",
            index.num_vectors, config.exact_max_vectors)
    summary = {
        "output": config.output, "level": index.level,
        "index_type": index.index_type, "vectors": index.num_vectors,
        "recordings": index.num_recordings, "added": added,
        "skipped": skipped,
    }
    logging.info("index %s: %d %s vectors of %d recordings (%s); %d "
                 "recordings added, %d already indexed", config.output,
                 summary["vectors"], summary["level"], summary["recordings"],
                 summary["index_type"], added, skipped)
    return summary
