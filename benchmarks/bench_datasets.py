#!/usr/bin/env python3
"""Reading AudioSet-sized metadata: --input_format=audioset at 2M segments.

Generates an AudioSet-like root in a temporary directory (segments CSVs in
the real format, 2,041,789 rows by default as in balanced + unbalanced +
eval; class_labels_indices.csv with 527 classes) and an audio folder
listing with `--present` of the segments' files under the four naming
conventions (`YTID.wav`, `YYTID.flac`, `YTID_STARTMS.wav`,
`YTID_START_END.wav`), then times

  1. parsing the segments CSVs (`datasets._read_audioset_segments`),
  2. indexing the folder listing by YouTube id (`index_audioset_audio`),
  3. the whole of `datasets.read_audioset` (parse, index, match, build the
     items and the missing list) on that listing,
  4. listing a real folder (`inputs.walk_directory`) of `--walk_files`
     empty files, scaled to the listing's size (creating 1.6M files here
     would time the disk, not the code),

and prints peak memory. Nothing is written outside the temporary directory.

    .venv/bin/python benchmarks/bench_datasets.py [--rows=2041789]
        [--present=0.8] [--walk_files=100000] [--output_json=PATH]
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks import machine  # pylint: disable=wrong-import-position
from triplet_audio.features import datasets  # pylint: disable=wrong-import-position
from triplet_audio.features import inputs  # pylint: disable=wrong-import-position

_ID_CHARS = np.array(list(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
SPLITS = (("balanced_train", 22160), ("eval", 20371))  # The rest: unbalanced.


def _ids(n, rng):
    codes = rng.integers(0, len(_ID_CHARS), size=(n, 11))
    return ["".join(row) for row in _ID_CHARS[codes]]


def write_root(root, rows, rng):
    """The metadata of an AudioSet-sized root; returns the segments."""
    meta = os.path.join(root, "metadata")
    os.makedirs(meta)
    mids = ["/m/%06d" % k for k in range(527)]
    with open(os.path.join(meta, "class_labels_indices.csv"), "w") as f:
        f.write("index,mid,display_name\n")
        for k, mid in enumerate(mids):
            f.write('%d,%s,"Class %d, with a comma"\n' % (k, mid, k))
    ytids = _ids(rows, rng)
    starts = rng.integers(0, 300, rows).astype(float)
    nlab = rng.integers(1, 4, rows)
    labels = rng.integers(0, 527, (rows, 3))
    sizes = [n for _, n in SPLITS]
    sizes.append(rows - sum(sizes))
    names = [s for s, _ in SPLITS] + ["unbalanced_train"]
    first = 0
    for name, size in zip(names, sizes):
        with open(os.path.join(meta, "%s_segments.csv" % name), "w") as f:
            f.write("# Segments csv created Sun Mar  5 10:54:31 2017\n"
                    "# num_ytids=%d, num_segs=%d, num_unique_labels=527, "
                    "num_positive_labels=0\n"
                    "# YTID, start_seconds, end_seconds, positive_labels\n"
                    % (size, size))
            for i in range(first, first + size):
                f.write('%s, %.3f, %.3f, "%s"\n' % (
                    ytids[i], starts[i], starts[i] + 10.0,
                    ",".join(mids[c] for c in labels[i, :nlab[i]])))
        first += size
    return ytids, starts


def listing(root, ytids, starts, present, rng):
    """Audio paths of `present` of the segments, the conventions mixed."""
    keep = np.flatnonzero(rng.random(len(ytids)) < present)
    style = rng.integers(0, 4, keep.size)
    audio = os.path.join(root, "audio")
    out = []
    for i, s in zip(keep, style):
        ytid, start = ytids[i], starts[i]
        name = ("%s.wav" % ytid, "Y%s.flac" % ytid,
                "%s_%d.wav" % (ytid, start * 1000),
                "%s_%.3f_%.3f.wav" % (ytid, start, start + 10))[s]
        out.append(os.path.join(audio, "part%02d" % (i % 40), name))
    return out


def _peak_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=2041789)
    parser.add_argument("--present", type=float, default=0.8)
    parser.add_argument("--walk_files", type=int, default=100000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output_json")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    figures = {"cpu": machine.cpu_model(), "cores": os.cpu_count(),
               "load_average": os.getloadavg()[0], "rows": args.rows,
               "present": args.present}
    with tempfile.TemporaryDirectory() as root:
        start = time.perf_counter()
        ytids, starts = write_root(root, args.rows, rng)
        files = listing(root, ytids, starts, args.present, rng)
        figures["generate_seconds"] = time.perf_counter() - start
        csvs = sorted(os.path.join(root, "metadata", n) for n in os.listdir(
            os.path.join(root, "metadata")) if n.endswith("_segments.csv"))
        figures["csv_bytes"] = sum(os.path.getsize(p) for p in csvs)
        del ytids, starts

        start = time.perf_counter()
        parsed = sum(len(datasets._read_audioset_segments(p))  # pylint: disable=protected-access
                     for p in csvs)
        figures["parse_seconds"] = time.perf_counter() - start
        assert parsed == args.rows, parsed

        start = time.perf_counter()
        index, unparsed = datasets.index_audioset_audio(files)
        figures["index_seconds"] = time.perf_counter() - start
        assert not unparsed
        del index

        real_walk = inputs.walk_directory
        inputs.walk_directory = lambda _root, _ext: files
        try:
            start = time.perf_counter()
            found = datasets.read_audioset(root)
            figures["read_audioset_seconds"] = time.perf_counter() - start
        finally:
            inputs.walk_directory = real_walk
        figures["items"] = len(found.items)
        figures["missing"] = found.info["missing"]
        figures["missing_json_bytes"] = len(json.dumps(
            found.info["missing_files"]))
        figures["peak_rss_mb"] = _peak_mb()
        del found

        walk_dir = os.path.join(root, "walk")
        for k in range(args.walk_files):
            sub = os.path.join(walk_dir, "part%02d" % (k % 40))
            if k < 40:
                os.makedirs(sub)
            open(os.path.join(sub, "%011d.wav" % k), "w").close()
        start = time.perf_counter()
        walked = len(inputs.walk_directory(walk_dir, ("wav",)))
        seconds = time.perf_counter() - start
        figures["walk_files"] = walked
        figures["walk_seconds"] = seconds
        figures["walk_seconds_scaled"] = seconds * len(files) / max(walked, 1)

    print("AudioSet-sized metadata: %d segments (%.0f MB of CSV), %d audio "
          "files listed (%.0f%%)" % (
              args.rows, figures["csv_bytes"] / 1e6, len(files),
              100 * args.present))
    print("  parse the segments CSVs       %6.1f s" % figures["parse_seconds"])
    print("  index the folder listing      %6.1f s" % figures["index_seconds"])
    print("  read_audioset (all of it)     %6.1f s  -> %d items, %d missing "
          "(%.1f MB of JSON in the manifest)" % (
              figures["read_audioset_seconds"], figures["items"],
              figures["missing"], figures["missing_json_bytes"] / 1e6))
    print("  walk a real folder            %6.2f s for %d files -> ~%.0f s "
          "for %d (local disk, warm cache)" % (
              figures["walk_seconds"], figures["walk_files"],
              figures["walk_seconds_scaled"], len(files)))
    print("  peak RSS                      %6.0f MB" % figures["peak_rss_mb"])
    print("  (%s, %d cores, load average %.1f)" % (
        figures["cpu"], figures["cores"], figures["load_average"]))
    if args.output_json:
        machine.write_json(args.output_json, figures)


if __name__ == "__main__":
    main()
