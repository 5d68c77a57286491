"""Sound search settings: IndexConfig (bin/index), SearchConfig (bin/search).

Each setting's default, help and bounds are written once here; the two
binaries' flags are derived from them (`fields.define_flags`), and an index
records the `IndexConfig` it was built with in its index.json.

Index kinds (`INDEX_TYPES`), all on cosine similarity (inner product of unit
vectors):

  exact   every vector compared with the query (faiss IndexFlatIP): exact
          top-k, memory = the raw float32 vectors.
  hnsw    a navigable small-world graph (faiss IndexHNSWFlat): approximate,
          fast at millions of vectors, memory ~1.5x the raw vectors.
  ivfpq   inverted lists of product-quantised codes (faiss IndexIVFPQ):
          approximate, --pq_m bytes a vector, for more vectors than memory
          holds raw.
  auto    exact up to --exact_max_vectors vectors, ivfpq above (hnsw for
          a set too small to train ivfpq); `index.resolve_index_type` says
          why.

No TensorFlow here.
"""

import dataclasses
from typing import Tuple

from triplet_audio.config import fields

EXACT = "exact"
HNSW = "hnsw"
IVFPQ = "ivfpq"
AUTO = "auto"
INDEX_TYPES = (AUTO, EXACT, HNSW, IVFPQ)

WINDOW = "window"
RECORDING = "recording"
LEVELS = (WINDOW, RECORDING)

OUTPUT_FORMATS = ("table", "json", "csv")

MEAN = "mean"
MAX = "max"
POOLINGS = (MEAN, MAX)

EXACT_MAX_VECTORS = 1_000_000
"""Default size up to which `auto` builds the exact index: 1M windows is
~270 hours of audio and 512 MB of 128-d vectors, where one exact query takes
60-75 ms on 2 shared cores (benchmarks/bench_search.py), fine for a command
or a web page; beyond it latency and memory grow linearly, and ivfpq answers
in a fraction of a millisecond from 0.08x the memory."""


def _is_integer(value):
    try:
        return not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError):
        return False


def _check_integer(config, name, minimum):
    value = getattr(config, name)
    if not _is_integer(value) or value < minimum:
        raise ValueError("--%s: must be an integer >= %d, got %r"
                         % (name, minimum, value))


@dataclasses.dataclass
class IndexConfig:
    """What `bin/index` builds (see each field's help).

    Attributes:
      embeddings: embeddings PATH as bin/embed --output wrote it.
      input: instead, a corpus or audio files to embed with --saved_model.
      saved_model: the export that made the vectors (see its help).
      output: the index directory.
      add: add the recordings not yet indexed to an existing index.
      overwrite: rebuild an existing index from these embeddings.
      The other fields are the index kind and its parameters.
    """
    embeddings: str = fields.setting(
        None, "Embeddings to index: the --output PATH given to bin/embed (a "
        "file, its shards, a glob or a directory of .npz files).", kind="str")
    input: str = fields.setting(
        None, "Instead of --embeddings: a corpus (TFRecord shards) or audio "
        "files (directory, glob, CSV path,labels[,split]) to embed with "
        "--saved_model first, as bin/embed would.", kind="str")
    saved_model: str = fields.setting(
        None, "Export directory written by bin/export. bin/index: the export "
        "that embeds --input, or that made --embeddings when the export "
        "they record has moved. bin/search: the export that embeds query "
        "audio; it must be the index's (default: the export the index "
        "records).", kind="str")
    output: str = fields.setting(
        None, "(Required.) Index directory (bin/index writes it, bin/search "
        "reads it with --index).", kind="str")
    level: str = fields.setting(
        WINDOW, "What a vector is: one 0.96 s window, or one recording (the "
        "mean of its windows, re-normalised; its windows are kept to find "
        "the best-matching moments).", choices=LEVELS)
    index_type: str = fields.setting(
        AUTO, "Index kind: exact (every vector compared), hnsw (graph, "
        "approximate), ivfpq (compressed inverted lists, approximate; hits "
        "re-scored exactly), or auto (exact up to --exact_max_vectors, else "
        "ivfpq).",
        choices=INDEX_TYPES)
    exact_max_vectors: int = fields.setting(
        EXACT_MAX_VECTORS, "With --index_type=auto: the largest number of "
        "vectors indexed exactly.", lower_bound=1)
    hnsw_m: int = fields.setting(
        16, "hnsw: graph neighbours per vector (memory and recall grow with "
        "it).", lower_bound=2)
    hnsw_ef_construction: int = fields.setting(
        40, "hnsw: candidate list size while building (build time and recall "
        "grow with it).", lower_bound=1)
    hnsw_ef_search: int = fields.setting(
        64, "hnsw: candidate list size while searching (the index's default;"
        " bin/search --ef_search overrides it).", lower_bound=1)
    ivf_nlist: int = fields.setting(
        0, "ivfpq: inverted lists (k-means cells); 0 picks 2 x sqrt(vectors),"
        " at most vectors / 39.", lower_bound=0)
    ivf_nprobe: int = fields.setting(
        32, "ivfpq: cells visited per query (the index's default; bin/search "
        "--nprobe overrides it).", lower_bound=1)
    pq_m: int = fields.setting(
        16, "ivfpq: sub-quantisers (bytes per vector); must divide the "
        "embedding size.", lower_bound=1)
    add: bool = fields.setting(
        False, "Add to the index in --output the recordings of the input it "
        "does not hold yet (by recording id), without rebuilding it.")
    overwrite: bool = fields.setting(
        False, "Replace the index in --output (built anew, atomically).")
    seed: int = 0

    def __post_init__(self):
        self.validate()

    def validate(self):
        """Checks the settings; returns self.

        Raises:
          ValueError: naming the flag of the first invalid value.
        """
        if self.level not in LEVELS:
            raise ValueError("--level: %r is not one of %s"
                             % (self.level, ", ".join(LEVELS)))
        if self.index_type not in INDEX_TYPES:
            raise ValueError("--index_type: %r is not one of %s"
                             % (self.index_type, ", ".join(INDEX_TYPES)))
        for name, minimum in (("exact_max_vectors", 1), ("hnsw_m", 2),
                              ("hnsw_ef_construction", 1),
                              ("hnsw_ef_search", 1), ("ivf_nlist", 0),
                              ("ivf_nprobe", 1), ("pq_m", 1)):
            _check_integer(self, name, minimum)
        if self.add and self.overwrite:
            raise ValueError("--add and --overwrite: give at most one")
        return self

    def require_inputs(self):
        """Checks what a build needs besides the settings; returns self.

        Raises:
          ValueError: naming the flag that is missing or contradicts another.
        """
        if not self.output:
            raise ValueError("--output: required (the index directory)")
        if bool(self.embeddings) == bool(self.input):
            raise ValueError(
                "give exactly one of --embeddings=PATH (bin/embed's output) "
                "and --input=CORPUS with --saved_model=DIR (got %s)"
                % ("both" if self.embeddings else "neither"))
        if self.input and not self.saved_model:
            raise ValueError("--saved_model: required with --input (the "
                             "export that embeds it)")
        return self

    def index_params(self):
        """The parameters recorded in index.json and used by the build."""
        return {name: getattr(self, name) for name in (
            "hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nlist",
            "ivf_nprobe", "pq_m")}


@dataclasses.dataclass
class SearchConfig:
    """What `bin/search` does (see each field's help).

    Attributes:
      index: the index directory.
      saved_model: the export that embeds query audio (`IndexConfig`'s
        field: one flag for both binaries).
      query: audio files, each one query.
      recording: recording ids of the index, each one query.
      The other fields shape the query and its output, or the web page.
    """
    index: str = fields.setting(
        None, "(Required.) Index directory written by bin/index.",
        kind="str")
    query: Tuple[str, ...] = fields.setting(
        (), "Query audio file(s), comma-separated: each is embedded with the "
        "index's export (any format, rate or length bin/embed reads) and "
        "searched on its own.", kind="list")
    recording: Tuple[str, ...] = fields.setting(
        (), "Query by recording id(s) of the index, comma-separated (their "
        "own recording is left out of the hits).", kind="list")
    query_start: float = fields.setting(
        None, "Query only the part of each query from this time (seconds).",
        kind="float", lower_bound=0.0)
    query_end: float = fields.setting(
        None, "Query only the part of each query before this time (seconds).",
        kind="float", lower_bound=0.0)
    k: int = fields.setting(
        10, "Recordings to return per query (each once, with its "
        "best-matching moments).", lower_bound=1)
    moments: int = fields.setting(
        3, "Best-matching moments (windows) listed per recording.",
        lower_bound=1)
    label: Tuple[str, ...] = fields.setting(
        (), "Only return recordings with one of these labels "
        "(comma-separated class names).", kind="list")
    pooling: str = fields.setting(
        MEAN, "How a query of several windows is searched: mean (the mean "
        "of its windows, re-normalised, as the paper's segment embedding) "
        "or max (each window on its own; a hit scores its best window "
        "pair).", choices=POOLINGS)
    format: str = fields.setting(
        "table", "Output: a readable table, JSON (each hit's recording named "
        "by its source path) or CSV.", choices=OUTPUT_FORMATS)
    ef_search: int = fields.setting(
        0, "hnsw: candidate list size per query; 0 is the index's.",
        lower_bound=0)
    nprobe: int = fields.setting(
        0, "ivfpq: cells visited per query; 0 is the index's.", lower_bound=0)
    serve: bool = fields.setting(
        False, "Serve the local web page instead of answering --query: pick "
        "or upload a query clip, listen to it and to each hit, see their "
        "log-mel images and scores. Runs until Ctrl-C.")
    host: str = fields.setting(
        "127.0.0.1", "--serve: address to listen on (localhost only by "
        "default; 0.0.0.0 opens the page to the network).")
    port: int = fields.setting(
        8000, "--serve: port to listen on (0 picks a free one; the address "
        "is logged).", lower_bound=0, upper_bound=65535)
    max_upload_mb: float = fields.setting(
        20.0, "--serve: largest query upload accepted, in MB.",
        lower_bound=0.0)
    saved_model: str = None

    def __post_init__(self):
        self.query = tuple(self.query or ())
        self.recording = tuple(self.recording or ())
        self.label = tuple(self.label or ())
        self.validate()

    def validate(self):
        """Checks the settings; returns self.

        Raises:
          ValueError: naming the flag of the first invalid value.
        """
        for name, minimum in (("k", 1), ("moments", 1), ("ef_search", 0),
                              ("nprobe", 0), ("port", 0)):
            _check_integer(self, name, minimum)
        if self.pooling not in POOLINGS:
            raise ValueError("--pooling: %r is not one of %s"
                             % (self.pooling, ", ".join(POOLINGS)))
        if self.format not in OUTPUT_FORMATS:
            raise ValueError("--format: %r is not one of %s"
                             % (self.format, ", ".join(OUTPUT_FORMATS)))
        for name in ("query_start", "query_end"):
            value = getattr(self, name)
            if value is not None and not value >= 0:
                raise ValueError("--%s: must be >= 0, got %r" % (name, value))
        if (self.query_start is not None and self.query_end is not None and
                self.query_end <= self.query_start):
            raise ValueError("--query_end (%g) must be after --query_start "
                             "(%g)" % (self.query_end, self.query_start))
        if not self.max_upload_mb > 0:
            raise ValueError("--max_upload_mb: must be > 0, got %r"
                             % (self.max_upload_mb,))
        return self

    def require_query(self):
        """Checks that a command-line search has what it needs; returns self.

        Raises:
          ValueError: naming the missing flag.
        """
        if not self.index:
            raise ValueError("--index: required (a directory bin/index "
                             "wrote)")
        if not self.serve and not (self.query or self.recording):
            raise ValueError("give --query=FILE[,FILE...] or "
                             "--recording=ID[,ID...] (or --serve for the web "
                             "page)")
        return self
