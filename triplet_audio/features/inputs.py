"""What to extract: audio inputs found on disk, and the one glob expansion.

  discover_inputs(input, extensions)  a directory, glob, audio file or CSV
                                      -> sorted `InputItem`s and the class
                                      vocabulary (bin/extract_features,
                                      bin/embed on audio)
  expand_globs(spec, ...)             the sorted paths a glob (or
                                      comma-separated globs, or a directory)
                                      names: every reader of user paths
                                      (audio, TFRecord shards, embeddings)
                                      expands them here, so `**`, commas and
                                      directory names with wildcard
                                      characters mean the same everywhere

No TensorFlow here.
"""

import csv
import dataclasses
import glob
import os

from triplet_audio.features import audio_io

GLOB_CHARS = frozenset("*?[")
"""Characters that make a path a glob (as `glob.glob` reads it)."""

_CSV_HEADER_NAMES = ("path", "file", "filename")


class ExtractError(ValueError):
    """A config or input extraction cannot use; the message names the field."""


@dataclasses.dataclass(frozen=True)
class InputItem:
    """One audio file to extract.

    Attributes:
      path: absolute path of the file.
      recording_id: its path relative to the input root, without extension
        (a dataset's own clip id for a dataset layout, `features.datasets`).
      labels: class indices into the vocabulary (sorted, unique).
      split: split name from the CSV (or the dataset's split or fold), or "".
      start: None, or the start in seconds of the segment this item is
        within a longer recording (an AudioSet segment of a file holding the
        whole video). A file no longer than the segment by more than
        `audio_io.CUT_TOLERANCE_SECONDS` is taken to be the segment already
        cut, and read whole (`audio_io.open_segment`).
      end: the segment's end in seconds (with `start`).
      events: None, or strong labels: (start_s, end_s, class index) tuples,
        times from the start of the segment; written as per-window labels
        (`records.WINDOW_LABELS`). () is a strongly labelled segment without
        events.
    """

    path: str
    recording_id: str
    labels: tuple = ()
    split: str = ""
    start: float = None
    end: float = None
    events: tuple = None

    def extras(self):
        """The fields beyond (path, recording_id, labels, split) that are set.

        Returns:
          dict of the set ones among start, end and events ({} for an item of
          a plain input: its fingerprint and plan line stay as they were).
        """
        out = {}
        if self.start is not None:
            out.update(start=self.start, end=self.end)
        if self.events is not None:
            out["events"] = [list(e) for e in self.events]
        return out

    @classmethod
    def from_extras(cls, path, recording_id, labels, split, extras=None):
        """The item `extras()` describes (inverse of it, for plan files)."""
        extras = extras or {}
        events = extras.get("events")
        return cls(path, recording_id, tuple(labels), split,
                   start=extras.get("start"), end=extras.get("end"),
                   events=None if events is None else tuple(
                       (float(a), float(b), int(c)) for a, b, c in events))


# ------------------------------------------------------------ globs ---


def is_glob(spec):
    """Whether `spec` holds a wildcard character (`GLOB_CHARS`)."""
    return any(ch in spec for ch in GLOB_CHARS)


def expand_globs(spec, split_commas=False, directory_glob=None, keep=None):
    """The sorted, distinct paths that a glob names.

    Args:
      spec: a glob (`**` matches any number of directories); a part without
        wildcards names itself if it exists.
      split_commas: read `spec` as comma-separated globs (blank parts are
        ignored).
      directory_glob: for a part that is an existing directory, the glob of
        its entries to list instead (e.g. "*.tfrecord"); the directory name
        is taken literally, wildcard characters and all. None: the
        directory stands for itself.
      keep: optional predicate; paths for which it is false are left out.

    Returns:
      sorted list of paths, as `glob.glob` spells them; empty when nothing
      matches (the caller says what was expected).
    """
    parts = str(spec).split(",") if split_commas else [str(spec)]
    found = set()
    for part in parts:
        part = part.strip() if split_commas else part
        if not part:
            continue
        if directory_glob is not None and os.path.isdir(part):
            part = os.path.join(glob.escape(part), directory_glob)
        found.update(glob.glob(part, recursive=True))
    return sorted(p for p in found if keep is None or keep(p))


def glob_root(pattern):
    """The directory above the first wildcard component of a glob."""
    parts = os.path.abspath(pattern).split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if is_glob(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) or os.sep


# ------------------------------------------------------- audio inputs ---


def extension(path):
    """A file's extension, lower case, without the dot ("" if none)."""
    return os.path.splitext(path)[1][1:].lower()


def recording_ids(paths, root):
    """Path relative to `root` without extension, '/'-separated.

    Two files differing only in extension (a.wav, a.flac) keep their
    extensions, so ids stay unique.
    """
    rel = [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]
    stems = [os.path.splitext(r)[0] for r in rel]
    counts = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [s if counts[s] == 1 else r for s, r in zip(stems, rel)]


def _walk_directory(root, extensions):
    found = []
    seen = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        # Symlinked directories are followed (data sets are often assembled
        # from links) but each real directory is visited once: no cycles.
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        # Hidden entries are never audio: .git, macOS "._x.wav" resource forks.
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found.extend(os.path.join(dirpath, f) for f in filenames
                     if not f.startswith(".") and extension(f) in extensions)
    return found


def walk_directory(root, extensions):
    """Every file under `root` with one of `extensions` (unsorted).

    Symlinked directories are followed, each real directory once; hidden
    entries are skipped.
    """
    return _walk_directory(root, tuple(extensions))


def read_csv(csv_path):
    """(base directory, rows (path, labels, split, line)) of an input CSV.

    Raises:
      ExtractError: naming the CSV and line of a row with too many columns.
    """
    base = os.path.dirname(os.path.abspath(csv_path))
    rows = []
    with open(csv_path, newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            row = [cell.strip() for cell in row]
            if not any(row):
                continue
            if not rows and row[0].lower() in _CSV_HEADER_NAMES and (
                    not os.path.isfile(os.path.join(base, row[0]))):
                continue  # Header row.
            if len(row) > 3:
                raise ExtractError(
                    "input: %s line %d: expected path,labels[,split], got %d "
                    "columns" % (csv_path, line, len(row)))
            row += [""] * (3 - len(row))
            path = os.path.normpath(os.path.join(base, row[0]))
            labels = sorted({l.strip() for l in row[1].split(";") if l.strip()})
            rows.append((path, labels, row[2], line))
    return base, rows


def discover_inputs(input_spec, extensions=audio_io.AUDIO_EXTENSIONS):
    """Lists the files to extract and the class vocabulary.

    Args:
      input_spec: a directory, a glob, a single audio file, or a CSV file
        (see `extract.ExtractConfig.input`).
      extensions: extensions picked up from a directory.

    Returns:
      (items, classes): `InputItem`s sorted by path, and the sorted class
      names (empty unless the input is a CSV); label indices point into it.

    Raises:
      ExtractError: naming `input` when nothing matches or the CSV is
        malformed.
    """
    extensions = tuple(extensions)
    if input_spec.lower().endswith(".csv") and os.path.isfile(input_spec):
        root, rows = read_csv(input_spec)
        first_line = {}
        for path, _, _, line in rows:
            if path in first_line:
                raise ExtractError("input: %s lists %s twice (lines %d and %d)"
                                   % (input_spec, path, first_line[path], line))
            first_line[path] = line
        classes = sorted({l for _, labels, _, _ in rows for l in labels})
        index = {name: i for i, name in enumerate(classes)}
        rows.sort(key=lambda r: r[0])
        ids = recording_ids([r[0] for r in rows], root)
        items = [InputItem(path, rid, tuple(index[l] for l in labels), split)
                 for (path, labels, split, _), rid in zip(rows, ids)]
        what = "CSV %s lists no files" % input_spec
    else:
        if os.path.isdir(input_spec):
            root = os.path.abspath(input_spec)
            paths = _walk_directory(root, extensions)
            what = "no files with extension %s under %s" % (
                ",".join(extensions), input_spec)
        else:
            root = glob_root(input_spec)
            paths = expand_globs(input_spec, keep=os.path.isfile)
            what = "%r matches no files" % input_spec
        paths = sorted({os.path.abspath(p) for p in paths})
        items = [InputItem(p, rid)
                 for p, rid in zip(paths, recording_ids(paths, root))]
        classes = []
    if not items:
        raise ExtractError("input: " + what)
    return items, classes
