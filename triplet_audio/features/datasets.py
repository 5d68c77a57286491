"""Datasets as their projects distribute them: what `--input_format` reads.

  discover(input, extensions, input_format)   any input -> `Discovery`:
                                              the `inputs.InputItem`s, the
                                              class vocabulary, which layout
                                              was read and what was found
                                              (the manifest's "dataset")
  detect_format(input)                        the layout `auto` reads

The layouts, each read from its root folder (`--input`), or from one of its
metadata files to read that part alone:

  audioset      `*_segments.csv` (balanced_train_segments.csv,
                unbalanced_train_segments.csv, eval_segments.csv: '#'
                comment lines, then `YTID, start_seconds, end_seconds,
                "mid,mid,..."`), `class_labels_indices.csv`
                (`index,mid,display_name`), in the root or a `metadata/` or
                `meta/` folder; the audio anywhere under the root, named by
                YouTube id (`YTID.ext`, `YYTID.ext`, `YTID_START.ext`,
                `YTID_START_END.ext`, START/END in seconds or milliseconds).
                A file longer than its segment holds the whole video and is
                cut to [start, end] (`audio_io.open_segment`). Optional
                strong labels (`*strong*.tsv`: segment_id,
                start_time_seconds, end_time_seconds, label[, present]),
                written as per-window labels, named with
                `mid_to_display_name.tsv` where present. Split: the CSV's
                name less `_segments` (balanced_train, unbalanced_train,
                eval); recording id `YTID_STARTMS` (the strong labels'
                segment_id, e.g. `--PJHxphWEs_30000`); labels: the display
                names, in class_labels_indices order.
  fsd50k        `FSD50K.ground_truth/dev.csv` (`fname,labels,mids,split`),
                `eval.csv` (`fname,labels,mids`), `vocabulary.csv`
                (`index,label,mid`, no header); `FSD50K.dev_audio/FNAME.wav`,
                `FSD50K.eval_audio/FNAME.wav`. Split: train / val (dev.csv's
                column) and eval; recording id FNAME.
  esc50         `meta/esc50.csv` (`filename,fold,target,category,...`),
                `audio/FILENAME`. Split: `fold1`..`fold5`; vocabulary by
                target, named by category.
  urbansound8k  `metadata/UrbanSound8K.csv` (`slice_file_name,fsID,start,
                end,salience,fold,classID,class`), `audio/foldN/FILE`.
                Split: `fold1`..`fold10`; vocabulary by classID, named by
                class.

A file the metadata lists but the folder lacks is counted and listed in the
result (`Discovery.info["missing_files"]`, then the manifest), never an
error: for AudioSet, whose videos disappear from YouTube, it is the normal
case. Only metadata that cannot be read (a missing metadata file, a
malformed row) is an `inputs.ExtractError`, naming the file and line.

No TensorFlow here.
"""

import collections
import csv
import dataclasses
import glob
import os
import re

from absl import logging

from triplet_audio.config import options
from triplet_audio.features import audio_io
from triplet_audio.features import inputs

CSV = options.CSV_FORMAT
AUTO = options.AUTO_FORMAT
AUDIOSET = "audioset"
FSD50K = "fsd50k"
ESC50 = "esc50"
URBANSOUND8K = "urbansound8k"

AUDIOSET_CLASSES = "class_labels_indices.csv"
AUDIOSET_SEGMENTS_SUFFIX = "_segments.csv"
AUDIOSET_MID_NAMES = "mid_to_display_name.tsv"
AUDIOSET_META_DIRS = ("", "metadata", "meta")
"""Where under the root AudioSet's metadata files are looked for."""
FSD50K_GROUND_TRUTH = "FSD50K.ground_truth"
FSD50K_AUDIO = {"dev": "FSD50K.dev_audio", "eval": "FSD50K.eval_audio"}
ESC50_META = os.path.join("meta", "esc50.csv")
ESC50_AUDIO = "audio"
US8K_META = os.path.join("metadata", "UrbanSound8K.csv")
US8K_AUDIO = "audio"

MISSING_LISTED_MAX = None
"""How many missing files the manifest lists per split (None: all)."""

_YTID = re.compile(r"[A-Za-z0-9_-]{11}")
_NAME_TIMES = re.compile(r"_(\d+(?:\.\d+)?)(?:[_-](\d+(?:\.\d+)?))?")
_START_MATCH_SECONDS = 1e-3


@dataclasses.dataclass(frozen=True)
class Discovery:
    """What an input holds.

    Attributes:
      items: `inputs.InputItem`s, sorted by (path, segment start).
      classes: the class vocabulary (names); label indices point into it.
      layout: the layout read: `CSV` or one of `options.DATASET_FORMATS`.
      info: {} for `CSV`; for a dataset, what the manifest records under
        "dataset": layout, metadata files read (relative to the root),
        listed / found / missing counts (also per split), the missing files
        per split, and the layout's own notes.
    """

    items: list
    classes: list
    layout: str
    info: dict


def _fail(message):
    raise inputs.ExtractError("input: " + message)


# ------------------------------------------------------------- detection ---


def _audioset_csvs(root):
    found = []
    for sub in AUDIOSET_META_DIRS:
        found += glob.glob(os.path.join(glob.escape(os.path.join(root, sub)),
                                        "*" + AUDIOSET_SEGMENTS_SUFFIX))
    return sorted(set(found))


def _probes():
    return (
        (AUDIOSET, lambda root: bool(_audioset_csvs(root))),
        (FSD50K, lambda root: any(os.path.isfile(os.path.join(
            root, FSD50K_GROUND_TRUTH, name)) for name in ("dev.csv",
                                                           "eval.csv"))),
        (ESC50, lambda root: os.path.isfile(os.path.join(root, ESC50_META))),
        (URBANSOUND8K, lambda root: os.path.isfile(os.path.join(root,
                                                                US8K_META))),
    )


def _file_layout(path):
    """The layout a metadata file belongs to, or None."""
    name = os.path.basename(path)
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    if name == "esc50.csv":
        return ESC50
    if name == "UrbanSound8K.csv":
        return URBANSOUND8K
    if name in ("dev.csv", "eval.csv") and parent == FSD50K_GROUND_TRUTH:
        return FSD50K
    if name.endswith(AUDIOSET_SEGMENTS_SUFFIX):
        return AUDIOSET
    return None


def detect_format(input_spec):
    """The layout `--input_format=auto` reads for `input_spec`.

    Args:
      input_spec: a dataset root, one of its metadata files, or any input
        of the csv format.

    Returns:
      one of `options.DATASET_FORMATS` when the metadata files of exactly
      one layout are there, else `CSV`.

    Raises:
      inputs.ExtractError: when a folder holds the metadata of several.
    """
    spec = str(input_spec)
    if os.path.isfile(spec):
        return _file_layout(spec) or CSV
    if not os.path.isdir(spec):
        return CSV
    found = [layout for layout, probe in _probes() if probe(spec)]
    if len(found) > 1:
        _fail("%s holds the metadata of several datasets (%s); name one with "
              "--input_format" % (spec, ", ".join(found)))
    return found[0] if found else CSV


# ------------------------------------------------------------- common ---


def _open_csv(path):
    try:
        return open(path, newline="", encoding="utf-8")
    except OSError as e:
        _fail("cannot read %s: %s" % (path, e.strerror or e))


def _read_table(path, required, delimiter=","):
    """Rows of a headed CSV / TSV as dicts, with their line numbers.

    Raises:
      inputs.ExtractError: naming the file when a `required` column is
        missing.
    """
    with _open_csv(path) as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in required if c not in header]
        if missing:
            _fail("%s: expected columns %s, found %s" % (
                path, ",".join(required), ",".join(header) or "none"))
        reader.fieldnames = header
        return [(reader.line_num, {k: (v or "").strip() for k, v in row.items()
                                   if k is not None})
                for row in reader]


def _int_cell(path, line, row, column):
    try:
        return int(row[column])
    except (TypeError, ValueError):
        _fail("%s line %d: %s=%r is not an integer" % (path, line, column,
                                                       row.get(column)))


def _listing(root):
    """Relative paths ('/'-separated) of every file under `root`."""
    out = set()
    if not os.path.isdir(root):
        return out
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, root).replace(os.sep, "/")
        prefix = "" if rel == "." else rel + "/"
        out.update(prefix + f for f in filenames)
    return out


def _unique_names(names, keys):
    """`names`, with a repeated name told apart by its key."""
    counts = collections.Counter(names)
    return [n if counts[n] == 1 else "%s (%s)" % (n, k)
            for n, k in zip(names, keys)]


class _Tally:
    """Listed / found / missing per split, and the missing files."""

    def __init__(self):
        self.listed = collections.Counter()
        self.found = collections.Counter()
        self.missing = collections.defaultdict(list)

    def add(self, split, found, missing_name=None):
        self.listed[split] += 1
        if found:
            self.found[split] += 1
        else:
            self.missing[split].append(missing_name)

    def info(self):
        splits = {}
        for split in sorted(self.listed):
            splits[split] = {"listed": self.listed[split],
                             "found": self.found[split],
                             "missing": len(self.missing.get(split, ()))}
        missing = {}
        for split in sorted(self.missing):
            missing[split] = sorted(self.missing[split])[:MISSING_LISTED_MAX]
        return {"listed": sum(self.listed.values()),
                "found": sum(self.found.values()),
                "missing": sum(len(v) for v in self.missing.values()),
                "splits": splits, "missing_files": missing}


def _finish(layout, root, items, classes, metadata, tally, **notes):
    """The `Discovery` of a dataset; fails when nothing listed is there."""
    info = {"layout": layout,
            "metadata": sorted(os.path.relpath(m, root).replace(os.sep, "/")
                               for m in metadata)}
    info.update(tally.info())
    info.update(notes)
    if not items:
        first = next((v[0] for v in info["missing_files"].values() if v),
                     None)
        _fail("none of the %d files listed by %s is under %s%s" % (
            info["listed"], ", ".join(info["metadata"]), root,
            " (first: %s)" % first if first else ""))
    if info["missing"]:
        logging.warning("%s: %d of %d listed files are missing (the "
                        "output lists them under \"dataset\")", layout,
                        info["missing"], info["listed"])
    items = sorted(items, key=lambda i: (i.path, -1.0 if i.start is None
                                         else i.start, i.recording_id))
    return Discovery(items=items, classes=list(classes), layout=layout,
                     info=info)


def _root_of(input_spec, meta_rel):
    """(root, metadata file or None) of an input naming a root or a file.

    Args:
      input_spec: the dataset root, or its metadata file.
      meta_rel: the metadata file's path relative to the root.
    """
    spec = os.path.abspath(str(input_spec))
    if os.path.isfile(spec):
        root = spec
        for _ in meta_rel.split(os.sep):
            root = os.path.dirname(root)
        return root, spec
    if not os.path.isdir(spec):
        _fail("%s is neither a dataset folder nor a metadata file" %
              input_spec)
    return spec, None


# ------------------------------------------------------------- ESC-50 ---


def _folds_dataset(layout, input_spec, meta_rel, columns, audio_dir,
                   audio_path):
    """ESC-50 and UrbanSound8K: one CSV, a class index column, folds.

    Args:
      layout: ESC50 or URBANSOUND8K.
      input_spec: root or metadata file.
      meta_rel: the metadata CSV relative to the root.
      columns: (file, fold, class index, class name) column names.
      audio_dir: the audio folder relative to the root.
      audio_path: (file, fold) -> the audio path relative to `audio_dir`.
    """
    root, meta = _root_of(input_spec, meta_rel)
    meta = meta or os.path.join(root, meta_rel)
    if not os.path.isfile(meta):
        _fail("%s has no %s (the %s layout)" % (root, meta_rel, layout))
    file_col, fold_col, index_col, name_col = columns
    rows = _read_table(meta, columns)
    names = {}
    for line, row in rows:
        index = _int_cell(meta, line, row, index_col)
        if names.setdefault(index, row[name_col]) != row[name_col]:
            _fail("%s line %d: %s %d is %r here but %r before" % (
                meta, line, index_col, index, row[name_col], names[index]))
    order = sorted(names)
    classes = _unique_names([names[i] for i in order], order)
    position = {index: k for k, index in enumerate(order)}
    present = _listing(os.path.join(root, audio_dir))
    tally, items, seen = _Tally(), [], {}
    for line, row in rows:
        fold = _int_cell(meta, line, row, fold_col)
        split = "fold%d" % fold
        rel = audio_path(row[file_col], fold)
        if rel in seen:
            _fail("%s lists %s twice (lines %d and %d)" % (
                meta, row[file_col], seen[rel], line))
        seen[rel] = line
        found = rel in present
        tally.add(split, found, audio_dir + "/" + rel)
        if found:
            items.append(inputs.InputItem(
                path=os.path.join(root, audio_dir, *rel.split("/")),
                recording_id=os.path.splitext(row[file_col])[0],
                labels=(position[_int_cell(meta, line, row, index_col)],),
                split=split))
    return _finish(layout, root, items, classes, [meta], tally)


def read_esc50(input_spec, extensions=None):
    """ESC-50: meta/esc50.csv and audio/ (see the module docstring)."""
    del extensions  # The metadata names every file.
    return _folds_dataset(
        ESC50, input_spec, ESC50_META,
        ("filename", "fold", "target", "category"), ESC50_AUDIO,
        lambda name, fold: name)


def read_urbansound8k(input_spec, extensions=None):
    """UrbanSound8K: metadata/UrbanSound8K.csv and audio/foldN/."""
    del extensions  # The metadata names every file.
    return _folds_dataset(
        URBANSOUND8K, input_spec, US8K_META,
        ("slice_file_name", "fold", "classID", "class"), US8K_AUDIO,
        lambda name, fold: "fold%d/%s" % (fold, name))


# -------------------------------------------------------------- FSD50K ---


def _split_list(cell):
    return [x.strip() for x in cell.split(",") if x.strip()]


def read_fsd50k(input_spec, extensions=None):
    """FSD50K: FSD50K.ground_truth/ and the two audio folders."""
    del extensions  # The metadata names every file.
    spec = os.path.abspath(str(input_spec))
    if os.path.isfile(spec):
        root = os.path.dirname(os.path.dirname(spec))
        parts = [spec]
    else:
        root, _ = _root_of(spec, os.path.join(FSD50K_GROUND_TRUTH, "dev.csv"))
        parts = [os.path.join(root, FSD50K_GROUND_TRUTH, n)
                 for n in ("dev.csv", "eval.csv")]
        parts = [p for p in parts if os.path.isfile(p)]
        if not parts:
            _fail("%s has no %s/dev.csv or eval.csv (the FSD50K layout)" % (
                root, FSD50K_GROUND_TRUTH))
    gt = os.path.join(root, FSD50K_GROUND_TRUTH)
    vocab_path = os.path.join(gt, "vocabulary.csv")
    metadata = list(parts)
    classes, mids = [], {}
    if os.path.isfile(vocab_path):
        metadata.append(vocab_path)
        with _open_csv(vocab_path) as f:
            for line, row in enumerate(csv.reader(f), start=1):
                if not row or (line == 1 and row[0].strip().lower() ==
                               "index"):
                    continue
                if len(row) < 2:
                    _fail("%s line %d: expected index,label,mid" % (
                        vocab_path, line))
                classes.append(row[1].strip())
                if len(row) > 2:
                    mids[row[1].strip()] = row[2].strip()
    tables = {}
    for path in parts:
        kind = os.path.splitext(os.path.basename(path))[0]
        needed = ("fname", "labels") + (("split",) if kind == "dev" else ())
        tables[kind] = (path, _read_table(path, needed))
    if not classes:
        classes = sorted({l for _, rows in tables.values()
                          for _, row in rows
                          for l in _split_list(row["labels"])})
    index = {name: i for i, name in enumerate(classes)}
    unknown = collections.Counter()
    tally, items, seen = _Tally(), [], {}
    for kind in sorted(tables):
        path, rows = tables[kind]
        folder = FSD50K_AUDIO[kind] if kind in FSD50K_AUDIO else (
            "FSD50K.%s_audio" % kind)
        present = _listing(os.path.join(root, folder))
        for line, row in rows:
            fname = row["fname"]
            if fname in seen:
                _fail("%s line %d: fname %s also at %s" % (path, line, fname,
                                                           seen[fname]))
            seen[fname] = "%s line %d" % (path, line)
            split = row.get("split") or "eval"
            labels = []
            for name in _split_list(row["labels"]):
                if name not in index:
                    unknown[name] += 1
                    index[name] = len(classes)
                    classes.append(name)
                labels.append(index[name])
            rel = fname + ".wav"
            found = rel in present
            tally.add(split, found, folder + "/" + rel)
            if found:
                items.append(inputs.InputItem(
                    path=os.path.join(root, folder, rel), recording_id=fname,
                    labels=tuple(sorted(set(labels))), split=split))
    notes = {}
    if unknown:
        notes["labels_not_in_vocabulary"] = dict(sorted(unknown.items()))
    return _finish(FSD50K, root, items, classes, metadata, tally, **notes)


# ------------------------------------------------------------ AudioSet ---


def parse_audioset_name(stem):
    """The (YouTube id, start) keys a file name stem may stand for.

    Args:
      stem: a file name without extension: `YTID`, `Y` + `YTID`,
        `YTID_START` or `YTID_START_END` (START/END as written, seconds or
        milliseconds; a `Y` prefix allowed there too).

    Returns:
      list of (ytid, start) with start a float as written or None: usually
      one, two when the `Y` prefix is ambiguous (an id may begin with Y).
    """
    keys = []
    for prefix in ("", "Y"):
        if not stem.startswith(prefix):
            continue
        body = stem[len(prefix):]
        ytid, rest = body[:11], body[11:]
        if len(ytid) != 11 or not _YTID.fullmatch(ytid):
            continue
        if not rest:
            keys.append((ytid, None))
            continue
        match = _NAME_TIMES.fullmatch(rest)
        if match:
            keys.append((ytid, float(match.group(1))))
    return keys


def _start_matches(name_start, segment_start):
    """Whether a start written in a file name is the segment's (s or ms)."""
    return (abs(name_start - segment_start) < _START_MATCH_SECONDS or
            abs(name_start / 1000.0 - segment_start) < _START_MATCH_SECONDS)


def segment_id(ytid, start_seconds):
    """AudioSet's segment id: `YTID_STARTMS` (as in the strong labels)."""
    return "%s_%d" % (ytid, int(round(float(start_seconds) * 1000)))


def _read_audioset_segments(path):
    """(line, ytid, start, end, mids) rows of a segments CSV."""
    rows = []
    with _open_csv(path) as f:
        reader = csv.reader(f, skipinitialspace=True)
        for row in reader:
            line = reader.line_num
            if not row or not "".join(row).strip() or (
                    row[0].lstrip().startswith("#")):
                continue
            if len(row) != 4:
                _fail("%s line %d: expected YTID, start_seconds, "
                      "end_seconds, \"labels\", got %d columns" % (
                          path, line, len(row)))
            ytid = row[0].strip()
            try:
                start, end = float(row[1]), float(row[2])
            except ValueError:
                _fail("%s line %d: start/end %r, %r are not numbers" % (
                    path, line, row[1], row[2]))
            if not end > start >= 0:
                _fail("%s line %d: segment [%s, %s] is empty" % (
                    path, line, row[1], row[2]))
            rows.append((line, ytid, start, end, _split_list(row[3])))
    return rows


def _audioset_class_table(meta_dirs):
    """(path or None, [(mid, display_name)]) of class_labels_indices.csv."""
    for d in meta_dirs:
        path = os.path.join(d, AUDIOSET_CLASSES)
        if os.path.isfile(path):
            rows = _read_table(path, ("index", "mid", "display_name"))
            table = sorted(((int(r["index"]), r["mid"], r["display_name"])
                            for _, r in rows), key=lambda t: t[0])
            return path, [(mid, name) for _, mid, name in table]
    return None, []


def _audioset_mid_names(meta_dirs):
    for d in meta_dirs:
        path = os.path.join(d, AUDIOSET_MID_NAMES)
        if os.path.isfile(path):
            names = {}
            with _open_csv(path) as f:
                for row in csv.reader(f, delimiter="\t"):
                    if len(row) >= 2:
                        names[row[0].strip()] = row[1].strip()
            return path, names
    return None, {}


def _audioset_strong(meta_dirs):
    """(paths, {segment_id: [(start, end, mid)]}) of the strong label TSVs."""
    paths, events = [], collections.defaultdict(list)
    for d in meta_dirs:
        for path in sorted(glob.glob(os.path.join(glob.escape(d),
                                                  "*strong*.tsv"))):
            rows = _read_table(path, ("segment_id", "start_time_seconds",
                                      "end_time_seconds", "label"),
                               delimiter="\t")
            paths.append(path)
            for line, row in rows:
                if row.get("present", "PRESENT").upper() != "PRESENT":
                    continue  # A framed_posneg file's negative frame.
                try:
                    a = float(row["start_time_seconds"])
                    b = float(row["end_time_seconds"])
                except ValueError:
                    _fail("%s line %d: times %r, %r are not numbers" % (
                        path, line, row["start_time_seconds"],
                        row["end_time_seconds"]))
                events[row["segment_id"]].append((a, b, row["label"]))
    return paths, events


def index_audioset_audio(paths):
    """{ytid: [(start written in the name or None, path)]} of audio files.

    Args:
      paths: audio file paths (a folder listing).

    Returns:
      (index, unparsed): the index, each list sorted; the number of files
      whose names follow none of the conventions.
    """
    index = collections.defaultdict(list)
    unparsed = 0
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        keys = parse_audioset_name(stem)
        if not keys:
            unparsed += 1
        for ytid, start in keys:
            index[ytid].append((start, path))
    for entries in index.values():
        entries.sort(key=lambda e: (e[0] is None, e[0] or 0.0, e[1]))
    return index, unparsed


def match_audioset_file(entries, start):
    """The file of a segment among its video's files, or None.

    A file whose name carries the segment's start is the segment's clip;
    otherwise a file named by the id alone (the clip, or the whole video
    to cut). Ties go to the first path in sorted order.

    Args:
      entries: the video's `index_audioset_audio` entries.
      start: the segment's start_seconds.

    Returns:
      a path, or None.
    """
    for name_start, path in entries:
        if name_start is not None and _start_matches(name_start, start):
            return path
    for name_start, path in entries:
        if name_start is None:
            return path
    return None


def read_audioset(input_spec, extensions=options.AUDIO_EXTENSIONS):
    """AudioSet: segments CSVs, class names, audio by YouTube id.

    Args:
      input_spec: the root (every `*_segments.csv` in it, or in its
        metadata/ or meta/ folder) or one segments CSV (that split alone;
        its folder, or the one above a metadata/ or meta/ folder, is the
        root).
      extensions: audio file extensions looked for under the root.

    Returns:
      `Discovery` (see the module docstring).
    """
    spec = os.path.abspath(str(input_spec))
    if os.path.isfile(spec):
        root = os.path.dirname(spec)
        if os.path.basename(root) in AUDIOSET_META_DIRS[1:]:
            root = os.path.dirname(root)
        csvs = [spec]
    elif os.path.isdir(spec):
        root = spec
        csvs = _audioset_csvs(root)
        if not csvs:
            _fail("%s has no *%s (the AudioSet layout: e.g. eval_segments.csv"
                  " in the root or in metadata/)" % (root,
                                                     AUDIOSET_SEGMENTS_SUFFIX))
    else:
        _fail("%s is neither an AudioSet folder nor a segments CSV" % spec)
    meta_dirs = [os.path.dirname(csvs[0])] + [
        os.path.join(root, d) for d in AUDIOSET_META_DIRS]
    meta_dirs = list(dict.fromkeys(os.path.normpath(d) for d in meta_dirs))
    classes_path, class_table = _audioset_class_table(meta_dirs)
    names_path, mid_names = _audioset_mid_names(meta_dirs)
    strong_paths, strong = _audioset_strong(meta_dirs)
    metadata = csvs + [p for p in (classes_path, names_path) if p]
    metadata += strong_paths
    mids = [mid for mid, _ in class_table]
    names = [name for _, name in class_table]
    if not class_table:
        logging.warning("AudioSet: no %s beside %s; classes are named by "
                        "their mids", AUDIOSET_CLASSES, csvs[0])
    index = {mid: i for i, mid in enumerate(mids)}
    unknown = collections.Counter()

    def class_of(mid):
        if mid not in index:
            unknown[mid] += 1
            index[mid] = len(mids)
            mids.append(mid)
            names.append(mid_names.get(mid, mid))
        return index[mid]

    audio, unparsed = index_audioset_audio(
        inputs.walk_directory(root, extensions))
    used = set()
    tally, items, seen, duplicates = _Tally(), [], {}, []
    strong_segments = strong_events = 0
    for path in csvs:
        split = os.path.basename(path)[:-len(AUDIOSET_SEGMENTS_SUFFIX)]
        for line, ytid, start, end, labels in _read_audioset_segments(path):
            rid = segment_id(ytid, start)
            if rid in seen:
                duplicates.append(rid)
                continue
            seen[rid] = True
            label_ids = tuple(sorted({class_of(m) for m in labels}))
            file_path = match_audioset_file(audio.get(ytid, ()), start)
            tally.add(split, file_path is not None, rid)
            if file_path is None:
                continue
            used.add(file_path)
            events = None
            if rid in strong:
                events = tuple(sorted((a, b, class_of(m))
                                      for a, b, m in strong[rid]))
                strong_segments += 1
                strong_events += len(events)
            items.append(inputs.InputItem(
                path=file_path, recording_id=rid, labels=label_ids,
                split=split, start=start, end=end, events=events))
    notes = {"audio_files": sum(len(v) for v in audio.values()),
             "audio_files_unused": len(
                 {p for v in audio.values() for _, p in v} - used),
             "audio_files_unparsed": unparsed,
             "cut_tolerance_seconds": audio_io.CUT_TOLERANCE_SECONDS}
    if duplicates:
        notes["duplicate_segments"] = sorted(duplicates)
    if unknown:
        notes["labels_not_in_class_list"] = dict(sorted(unknown.items()))
    if strong_paths:
        notes["strong_labels"] = {"segments": strong_segments,
                                  "events": strong_events}
    classes = _unique_names(names, mids)
    return _finish(AUDIOSET, root, items, classes, metadata, tally, **notes)


# ------------------------------------------------------------ dispatch ---


READERS = {
    AUDIOSET: read_audioset,
    FSD50K: read_fsd50k,
    ESC50: read_esc50,
    URBANSOUND8K: read_urbansound8k,
}
"""Reader of each dataset layout: (input, extensions) -> `Discovery`."""


def discover(input_spec, extensions=options.AUDIO_EXTENSIONS,
             input_format=CSV):
    """What to extract (or embed) from an input of any format.

    Args:
      input_spec: for `CSV`, a directory, glob, audio file or CSV
        (`inputs.discover_inputs`); for a dataset, its root or one of its
        metadata files.
      extensions: audio extensions picked up from a folder (csv and
        AudioSet; the other datasets' metadata name their files).
      input_format: one of `options.INPUT_FORMATS`.

    Returns:
      a `Discovery`.

    Raises:
      inputs.ExtractError: naming the input when nothing can be read, the
        metadata is malformed, or the format is unknown.
    """
    layout = input_format
    if layout == AUTO:
        layout = detect_format(input_spec)
        logging.info("input_format=auto: reading %s as %s", input_spec,
                     layout)
    if layout == CSV:
        items, classes = inputs.discover_inputs(input_spec, extensions)
        return Discovery(items=items, classes=list(classes), layout=CSV,
                         info={})
    if layout not in READERS:
        raise inputs.ExtractError("input_format: %r is not one of %s" % (
            input_format, ", ".join(options.INPUT_FORMATS)))
    found = READERS[layout](input_spec, tuple(extensions))
    logging.info("%s: %d of %d listed files found under the root (%s)",
                 layout, found.info["found"], found.info["listed"],
                 ", ".join("%s %d" % (s, v["found"])
                           for s, v in found.info["splits"].items()))
    return found
