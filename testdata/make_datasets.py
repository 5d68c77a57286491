#!/usr/bin/env python3
"""Generates tiny copies of AudioSet, FSD50K, ESC-50 and UrbanSound8K.

Each copy has its dataset's exact metadata formats (AudioSet's comment
header and `", "`-separated segments CSVs with quoted mid lists, a display
name with a comma, FSD50K's quoted comma-separated label lists, the ESC-50
and UrbanSound8K columns and folders) and a few seconds of generated audio
per clip (a class-specific pair of tones in seeded noise). The AudioSet
copy has a segment whose video is missing, a file holding a whole "video"
to be cut to its segment, the naming conventions `YTID.ext`, `YYTID.ext`,
`YTID_START.ext` and `YTID_START_END.ext`, an audio file no segment names,
and strong labels for one segment (one of them a class only the strong
vocabulary has). FSD50K has a missing clip too. Everything is deterministic
(seeded) and about 3 MB.

    python testdata/make_datasets.py [OUT_DIR]   # default testdata/generated/datasets

or call `make_datasets(out_dir)` (tests do, into a temporary directory).
The constants below are the contract with the tests: what each layout must
yield (`EXPECTED`), written independently of the library's readers.
"""

import csv
import os
import sys
import zlib

import numpy as np
import soundfile as sf

AUDIOSET = "audioset"
FSD50K = "FSD50K"
ESC50 = "ESC-50-master"
URBANSOUND8K = "UrbanSound8K"
"""Root folders of the copies under the output directory."""

# ------------------------------------------------------------ AudioSet ---

AUDIOSET_CLASSES = (  # index, mid, display_name (as in the real file)
    (0, "/m/09x0r", "Speech"),
    (1, "/m/05zppz", "Male speech, man speaking"),
    (2, "/m/0bt9lr", "Dog"),
    (3, "/m/04rlf", "Music"),
)
AUDIOSET_STRONG_ONLY = ("/m/0strong1", "Squeak")
"""A class of the strong labels that class_labels_indices.csv lacks."""

# split -> rows (ytid, start, end, mids); then how its audio is stored.
AUDIOSET_SEGMENTS = {
    "balanced_train": (
        ("AAAAAAAAAAA", 0.0, 2.0, ("/m/09x0r", "/m/05zppz")),
        ("Bb-_bbbbbbb", 3.0, 5.0, ("/m/0bt9lr",)),
        ("CCCCCCCCCCC", 1.0, 3.0, ("/m/04rlf", "/m/09x0r")),
        ("DDDDDDDDDDD", 10.0, 12.0, ("/m/0bt9lr",)),
    ),
    "eval": (
        ("EEEEEEEEEEE", 2.0, 4.0, ("/m/09x0r",)),
        ("Yyyyyyyyyyy", 0.0, 1.5, ("/m/04rlf",)),
    ),
}
AUDIOSET_FILES = {  # ytid -> (file under the root, seconds, class, cut?)
    "AAAAAAAAAAA": ("audio/balanced/AAAAAAAAAAA.wav", 2.0, 0, False),
    # The whole "video": 8 s, of which the segment is [3, 5].
    "Bb-_bbbbbbb": ("audio/balanced/YBb-_bbbbbbb.flac", 8.0, 2, True),
    "CCCCCCCCCCC": ("audio/balanced/CCCCCCCCCCC_1000.wav", 2.0, 3, False),
    "EEEEEEEEEEE": ("audio/eval/EEEEEEEEEEE_2.000_4.000.wav", 2.0, 0, False),
    "Yyyyyyyyyyy": ("audio/eval/Yyyyyyyyyyy.ogg", 1.5, 3, False),
}
AUDIOSET_MISSING = ("DDDDDDDDDDD_10000",)
AUDIOSET_UNUSED = "audio/ZZZZZZZZZZZ.wav"
"""Audio that no segment names."""
AUDIOSET_STRONG = (  # segment_id, start, end, mid
    ("EEEEEEEEEEE_2000", 0.0, 0.5, "/m/09x0r"),
    ("EEEEEEEEEEE_2000", 1.2, 2.0, AUDIOSET_STRONG_ONLY[0]),
)

# -------------------------------------------------------------- FSD50K ---

FSD50K_VOCABULARY = ("Bark", "Dog", "Domestic_animals_and_pets", "Guitar",
                     "Music")
FSD50K_DEV = (  # fname, labels, split
    ("101", ("Bark", "Dog", "Domestic_animals_and_pets"), "train"),
    ("102", ("Guitar", "Music"), "train"),
    ("103", ("Music",), "val"),
    ("104", ("Dog",), "train"),  # Missing on disk.
)
FSD50K_EVAL = (
    ("201", ("Guitar", "Music")),
    ("202", ("Bark", "Dog")),
)
FSD50K_MISSING = ("104",)
FSD50K_SECONDS = 1.5

# -------------------------------------------------------------- ESC-50 ---

ESC50_CLASSES = ("dog", "rain", "crying_baby")  # target 0, 1, 2
ESC50_FOLDS = 5
ESC50_PER_CLASS_PER_FOLD = 2
ESC50_SECONDS = 1.2

# -------------------------------------------------------- UrbanSound8K ---

US8K_CLASSES = ((0, "air_conditioner"), (3, "dog_bark"), (6, "gun_shot"))
US8K_FOLDS = 10
US8K_SECONDS = 1.0

def _class_freqs(name):
    """The two tone frequencies of a class, from its name alone."""
    k = zlib.crc32(name.encode("utf-8"))
    return 250.0 + 150.0 * (k % 13), 2000.0 + 400.0 * ((k >> 8) % 11)


def clip(name, seconds, rate, seed):
    """A clip of class `name`: its two tones in seeded noise, float32."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / float(rate)
    f1, f2 = _class_freqs(name)
    phase = rng.uniform(0, 2 * np.pi, 2)
    x = (0.3 * np.sin(2 * np.pi * f1 * t + phase[0]) +
         0.2 * np.sin(2 * np.pi * f2 * t + phase[1]) +
         0.05 * rng.standard_normal(t.size))
    return (x * rng.uniform(0.5, 1.0)).astype(np.float32)


def _write_audio(path, data, rate):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, data, rate, subtype="PCM_16" if not path.endswith(".ogg")
             else "VORBIS")


def _write_csv(path, header, rows, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n", **kw)
        if header:
            writer.writerow(header)
        writer.writerows(rows)


def make_audioset(root):
    """AudioSet's layout (see the module docstring); returns `root`."""
    meta = os.path.join(root, "metadata")
    for split, rows in AUDIOSET_SEGMENTS.items():
        path = os.path.join(meta, "%s_segments.csv" % split)
        os.makedirs(meta, exist_ok=True)
        with open(path, "w", encoding="utf-8") as f:
            # The real files' header: three comment lines.
            f.write("# Segments csv created Sun Mar  5 10:54:31 2017\n")
            f.write("# num_ytids=%d, num_segs=%d, num_unique_labels=%d, "
                    "num_positive_labels=%d\n" % (
                        len(rows), len(rows), len(AUDIOSET_CLASSES),
                        sum(len(r[3]) for r in rows)))
            f.write("# YTID, start_seconds, end_seconds, positive_labels\n")
            for ytid, start, end, mids in rows:
                f.write('%s, %.3f, %.3f, "%s"\n' % (ytid, start, end,
                                                    ",".join(mids)))
    with open(os.path.join(meta, "class_labels_indices.csv"), "w",
              encoding="utf-8") as f:
        f.write("index,mid,display_name\n")
        for index, mid, name in AUDIOSET_CLASSES:
            f.write('%d,%s,"%s"\n' % (index, mid, name))
    with open(os.path.join(meta, "mid_to_display_name.tsv"), "w",
              encoding="utf-8") as f:
        for _, mid, name in AUDIOSET_CLASSES:
            f.write("%s\t%s\n" % (mid, name))
        f.write("%s\t%s\n" % AUDIOSET_STRONG_ONLY)
    with open(os.path.join(meta, "audioset_eval_strong.tsv"), "w",
              encoding="utf-8") as f:
        f.write("segment_id\tstart_time_seconds\tend_time_seconds\tlabel\n")
        for seg, start, end, mid in AUDIOSET_STRONG:
            f.write("%s\t%.3f\t%.3f\t%s\n" % (seg, start, end, mid))
    names = [name for _, _, name in AUDIOSET_CLASSES]
    for k, (ytid, (rel, seconds, cls, _)) in enumerate(
            sorted(AUDIOSET_FILES.items())):
        _write_audio(os.path.join(root, rel),
                     clip(names[cls], seconds, 22050 if k % 2 else 16000, k),
                     22050 if k % 2 else 16000)
    _write_audio(os.path.join(root, AUDIOSET_UNUSED),
                 clip(names[2], 1.0, 16000, 99), 16000)
    return root


def make_fsd50k(root):
    """FSD50K's layout; returns `root`."""
    mids = {name: "/m/fsd%d" % i for i, name in enumerate(FSD50K_VOCABULARY)}
    gt = os.path.join(root, "FSD50K.ground_truth")
    _write_csv(os.path.join(gt, "vocabulary.csv"), None,
               [(i, name, mids[name])
                for i, name in enumerate(FSD50K_VOCABULARY)])
    _write_csv(os.path.join(gt, "dev.csv"), ("fname", "labels", "mids",
                                             "split"),
               [(f, ",".join(l), ",".join(mids[n] for n in l), s)
                for f, l, s in FSD50K_DEV])
    _write_csv(os.path.join(gt, "eval.csv"), ("fname", "labels", "mids"),
               [(f, ",".join(l), ",".join(mids[n] for n in l))
                for f, l in FSD50K_EVAL])
    for k, (fname, labels, _) in enumerate(FSD50K_DEV):
        if fname not in FSD50K_MISSING:
            _write_audio(os.path.join(root, "FSD50K.dev_audio",
                                      fname + ".wav"),
                         clip(labels[-1], FSD50K_SECONDS, 44100, 100 + k),
                         44100)
    for k, (fname, labels) in enumerate(FSD50K_EVAL):
        _write_audio(os.path.join(root, "FSD50K.eval_audio", fname + ".wav"),
                     clip(labels[-1], FSD50K_SECONDS, 44100, 200 + k), 44100)
    return root


def esc50_rows(classes=ESC50_CLASSES, folds=ESC50_FOLDS,
               per_class_per_fold=ESC50_PER_CLASS_PER_FOLD):
    """(filename, fold, target, category, esc10, src_file, take) rows."""
    rows = []
    for fold in range(1, folds + 1):
        for target, category in enumerate(classes):
            for k in range(per_class_per_fold):
                src = 100000 + 1000 * fold + 10 * target + k
                take = "ABCDEFGH"[k % 8]
                rows.append(("%d-%d-%s-%d.wav" % (fold, src, take, target),
                             fold, target, category, str(target == 0), src,
                             take))
    return rows


ESC50_HEADER = ("filename", "fold", "target", "category", "esc10",
                "src_file", "take")


def make_esc50(root, audio_fn=None, rows=None, seconds=ESC50_SECONDS):
    """ESC-50's layout; returns `root`.

    Args:
      root: folder to write.
      audio_fn: optional (category, index) -> (float32 waveform, rate);
        default: `clip` at 16 kHz (ESC-50's own is 44.1 kHz; the tiny
        copy keeps its size down).
      rows: optional `esc50_rows(...)` (default: the tiny copy's).
      seconds: clip length with the default `audio_fn`.
    """
    rows = esc50_rows() if rows is None else rows
    _write_csv(os.path.join(root, "meta", "esc50.csv"), ESC50_HEADER, rows)
    for k, row in enumerate(rows):
        if audio_fn is None:
            data, rate = clip(row[3], seconds, 16000, 300 + k), 16000
        else:
            data, rate = audio_fn(row[3], k)
        _write_audio(os.path.join(root, "audio", row[0]), data, rate)
    return root


def us8k_rows():
    """UrbanSound8K.csv rows: one clip per fold, the classes in turn."""
    rows = []
    for fold in range(1, US8K_FOLDS + 1):
        class_id, name = US8K_CLASSES[(fold - 1) % len(US8K_CLASSES)]
        fs_id = 7000 + fold
        rows.append(("%d-%d-0-%d.wav" % (fs_id, class_id, fold), fs_id,
                     "%.6f" % (fold * 0.5), "%.6f" % (fold * 0.5 + 1.0),
                     1 + fold % 2, fold, class_id, name))
    return rows


def make_urbansound8k(root):
    """UrbanSound8K's layout; returns `root`."""
    rows = us8k_rows()
    _write_csv(os.path.join(root, "metadata", "UrbanSound8K.csv"),
               ("slice_file_name", "fsID", "start", "end", "salience",
                "fold", "classID", "class"), rows)
    for k, row in enumerate(rows):
        # Stereo, as many UrbanSound8K slices are.
        mono = clip(row[7], US8K_SECONDS, 22050, 400 + k)
        _write_audio(os.path.join(root, "audio", "fold%d" % row[5], row[0]),
                     np.stack([mono, 0.5 * mono], axis=1), 22050)
    return root


def expected():
    """What each layout must yield, from the constants alone.

    Returns:
      {layout: {"classes": [...], "records": {recording_id: (labels
      (names, sorted), split, audio seconds)}, "missing": {split: [...]}}}.
    """
    as_names = {mid: name for _, mid, name in AUDIOSET_CLASSES}
    audioset = {}
    for split, rows in AUDIOSET_SEGMENTS.items():
        for ytid, start, end, mids in rows:
            rid = "%s_%d" % (ytid, int(round(start * 1000)))
            if rid in AUDIOSET_MISSING:
                continue
            audioset[rid] = (sorted(as_names[m] for m in mids), split,
                             end - start)
    fsd = {f: (sorted(l), s, FSD50K_SECONDS) for f, l, s in FSD50K_DEV
           if f not in FSD50K_MISSING}
    fsd.update({f: (sorted(l), "eval", FSD50K_SECONDS)
                for f, l in FSD50K_EVAL})
    esc = {r[0][:-4]: ([r[3]], "fold%d" % r[1], ESC50_SECONDS)
           for r in esc50_rows()}
    us8k = {r[0][:-4]: ([r[7]], "fold%d" % r[5], US8K_SECONDS)
            for r in us8k_rows()}
    return {
        "audioset": {
            "classes": [n for _, _, n in AUDIOSET_CLASSES] + [
                AUDIOSET_STRONG_ONLY[1]],
            "records": audioset,
            "missing": {"balanced_train": list(AUDIOSET_MISSING)}},
        "fsd50k": {
            "classes": list(FSD50K_VOCABULARY), "records": fsd,
            "missing": {"train": ["FSD50K.dev_audio/104.wav"]}},
        "esc50": {"classes": list(ESC50_CLASSES), "records": esc,
                  "missing": {}},
        "urbansound8k": {"classes": [n for _, n in US8K_CLASSES],
                         "records": us8k, "missing": {}},
    }


ROOTS = {"audioset": AUDIOSET, "fsd50k": FSD50K, "esc50": ESC50,
         "urbansound8k": URBANSOUND8K}
"""Layout name (`--input_format`) -> root folder under the output."""


def make_datasets(out_dir):
    """Writes the four copies under `out_dir`; returns `out_dir`."""
    make_audioset(os.path.join(out_dir, AUDIOSET))
    make_fsd50k(os.path.join(out_dir, FSD50K))
    make_esc50(os.path.join(out_dir, ESC50))
    make_urbansound8k(os.path.join(out_dir, URBANSOUND8K))
    return out_dir


if __name__ == "__main__":
    make_datasets(sys.argv[1] if len(sys.argv) > 1 else
                  os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "generated", "datasets"))
