"""Which export made a set of vectors: its identity and fingerprint.

Vectors of two exports (or of an export and the log-mel baseline) live in
different spaces: a query embedded by one and searched among the other's
vectors returns confident nonsense. An index therefore records the identity
of the export that made its vectors, and every query is checked against it.

The identity of an export directory (bin/export's output) is its
`metadata.json` (version, step, model, training config, front end) and its
weights: the fingerprint is a SHA-256 over the metadata (canonical JSON) and
the SavedModel's `variables/variables.index`, which holds a CRC32C of every
weight tensor, so a re-export of the same run at another step, or a retrained
model written to the same place, gets another fingerprint without hashing the
weights themselves. The log-mel baseline's identity is its representation and
front end.

No TensorFlow here.
"""

import hashlib
import json
import os

from triplet_audio import constants as C
from triplet_audio.config import jsonio

METADATA_NAME = "metadata.json"
SAVED_MODEL_SUBDIR = "saved_model"
VARIABLES_INDEX = os.path.join("variables", "variables.index")
LOGMEL = "logmel"

# The fields of an export's metadata.json that bin/embed copies into an
# embeddings file's metadata ("export"): what an index can compare with.
EMBED_EXPORT_FIELDS = ("version", "model", "step", "embedding_size",
                       "tensorflow_version")


class ExportMismatchError(ValueError):
    """Vectors or a query come from another export than the index's."""


def export_dir_of(path):
    """The export directory of `path`: itself, or the one above its SavedModel.

    Args:
      path: an export directory (bin/export --export_dir) or the SavedModel
        directory inside it.

    Returns:
      absolute path of the directory holding metadata.json.

    Raises:
      FileNotFoundError: naming `path` when neither holds metadata.json.
    """
    path = os.path.abspath(os.fspath(path))
    if os.path.isfile(os.path.join(path, METADATA_NAME)):
        return path
    parent = os.path.dirname(path)
    if os.path.isfile(os.path.join(parent, METADATA_NAME)):
        return parent
    if not os.path.exists(path):
        raise FileNotFoundError("export %s does not exist" % path)
    raise FileNotFoundError("%s has no %s: not an export written by "
                            "bin/export" % (path, METADATA_NAME))


def _saved_model_dir(export_dir, metadata):
    return os.path.join(export_dir, metadata.get("saved_model") or
                        SAVED_MODEL_SUBDIR)


def export_identity(path):
    """The identity of an export: fingerprint and the fields shown to users.

    Args:
      path: an export directory or the SavedModel inside it.

    Returns:
      dict with fingerprint (hex SHA-256), export_dir (absolute), step,
      model (name), representation, embedding_size, version and frontend.

    Raises:
      FileNotFoundError: when `path` holds no export.
      ValueError: when its metadata.json is not valid JSON.
    """
    export_dir = export_dir_of(path)
    metadata = jsonio.read_json(os.path.join(export_dir, METADATA_NAME))
    digest = hashlib.sha256()
    digest.update(json.dumps(metadata, sort_keys=True).encode("utf-8"))
    variables = os.path.join(_saved_model_dir(export_dir, metadata),
                             VARIABLES_INDEX)
    if os.path.isfile(variables):
        with open(variables, "rb") as f:
            digest.update(f.read())
    return {
        "fingerprint": digest.hexdigest(),
        "export_dir": export_dir,
        "step": metadata.get("step"),
        "model": (metadata.get("model") or {}).get("name"),
        "representation": representation_name(metadata),
        "embedding_size": metadata.get("embedding_size"),
        "version": metadata.get("version"),
        "frontend": metadata.get("frontend"),
        "metadata": {k: metadata.get(k) for k in EMBED_EXPORT_FIELDS},
    }


def representation_name(metadata):
    """e.g. "proximity-resnet50", as bin/embed names an export's vectors."""
    model = (metadata.get("model") or {}).get("name") or "saved_model"
    sampler = (metadata.get("training_config") or {}).get("sampler")
    if isinstance(sampler, dict):
        sampler = sampler.get("sampler")
    return "%s-%s" % (sampler, model) if isinstance(sampler, str) else model


def logmel_identity():
    """The identity of the log-mel baseline (no export)."""
    frontend = C.frontend_params()
    digest = hashlib.sha256(json.dumps(
        {"representation": LOGMEL, "frontend": frontend},
        sort_keys=True).encode("utf-8")).hexdigest()
    return {"fingerprint": "%s-%s" % (LOGMEL, digest[:16]),
            "export_dir": None, "step": None, "model": None,
            "representation": LOGMEL,
            "embedding_size": C.WINDOW_FRAMES * C.NUM_MEL_BANDS,
            "version": None, "frontend": frontend, "metadata": {}}


def describe(identity):
    """A short human description of an identity, for messages."""
    if identity.get("representation") == LOGMEL and not identity.get(
            "export_dir"):
        return "the log-mel baseline"
    return "export %s (%s, step %s, fingerprint %s)" % (
        identity.get("export_dir"), identity.get("representation"),
        identity.get("step"), str(identity.get("fingerprint"))[:12])


def identity_of_embeddings(emb_set, saved_model=None):
    """The identity of the export that made an `EmbeddingSet`'s vectors.

    bin/embed records the SavedModel it used (its absolute path) and a copy
    of the export's metadata fields in the file's metadata. The export is
    looked up there, or at `saved_model` when given (for an export that has
    moved since); either way the export's metadata must agree with what the
    embeddings file recorded.

    Args:
      emb_set: an `embeddings_io.EmbeddingSet` written by bin/embed.
      saved_model: optional export directory that made it.

    Returns:
      an `export_identity` dict (or `logmel_identity()`).

    Raises:
      ExportMismatchError: the export given or found is not the one the
        embeddings record.
      FileNotFoundError: the export cannot be found (names the flag that
        fixes it).
    """
    meta = emb_set.metadata or {}
    if emb_set.representation == LOGMEL:
        if saved_model:
            raise ExportMismatchError(
                "%s holds the log-mel baseline, not vectors of an export; "
                "drop --saved_model" % emb_set.source)
        return logmel_identity()
    recorded = meta.get("saved_model")
    path = saved_model or recorded
    if not path:
        raise FileNotFoundError(
            "%s does not record the export that made it (not written by "
            "bin/embed?); pass --saved_model=DIR naming that export"
            % emb_set.source)
    try:
        identity = export_identity(path)
    except FileNotFoundError as e:
        raise FileNotFoundError(
            "%s was embedded with the export at %s, which is gone (%s); pass "
            "--saved_model=DIR naming that export where it is now"
            % (emb_set.source, recorded, e)) from e
    expected = meta.get("export") or {}
    differing = [k for k in EMBED_EXPORT_FIELDS if k in expected and
                 expected[k] != identity["metadata"].get(k)]
    if emb_set.dim != identity["embedding_size"]:
        differing.append("embedding_size")
    if differing:
        raise ExportMismatchError(
            "%s was not embedded with %s: %s differ (%s); embed again with "
            "this export, or pass --saved_model=DIR naming the one that made "
            "it" % (emb_set.source, describe(identity), ", ".join(
                sorted(set(differing))), "; ".join(
                    "%s %r vs %r" % (k, expected.get(k),
                                     identity["metadata"].get(k)
                                     if k != "embedding_size" else
                                     identity["embedding_size"])
                    for k in sorted(set(differing)))))
    return identity


def check_same(index_identity, query_identity, index_dir):
    """Refuses a query made by another export than the index's.

    Args:
      index_identity: the identity recorded in the index.
      query_identity: the identity of the export embedding the query.
      index_dir: the index, for the message.

    Raises:
      ExportMismatchError: naming both exports and what to do.
    """
    if index_identity.get("fingerprint") == query_identity.get(
            "fingerprint"):
        return
    raise ExportMismatchError(
        "index %s was built with %s, but the query is embedded with %s: "
        "their vectors are not comparable; query with the index's export "
        "(--saved_model=%s) or rebuild the index with bin/index"
        % (index_dir, describe(index_identity), describe(query_identity),
           index_identity.get("export_dir") or "(none: --saved_model "
           "omitted)"))
