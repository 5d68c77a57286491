"""Soak part `audio_fuzz` (section "fuzzing"): mutated audio files.

Valid WAV (PCM 8/16/24 bit, float), FLAC, OGG/Vorbis and MP3 files are
written with soundfile and mutated: bit flips, byte-range overwrites,
truncations, deleted ranges, header field changes (RIFF/data sizes, channels,
sample rate, bits per sample, format tag; FLAC STREAMINFO; Ogg page headers
with and without a fixed CRC, Vorbis identification header; MP3 frame
headers, Xing frame count, ID3v2 size), huge declared sizes, zero-length
files, appended garbage and content of another format. Batches of them are
extracted, each by its own child process (`python audio_fuzz.py --driver`:
`extract.run` on the batch with the default isolated decoder, one worker,
then every written record read back), under a timeout. Each batch also holds
a few valid files on which the decoder process is made to crash (SIGSEGV,
SIGABRT, exit) or hang through its fault-injection hook
(`decode_worker.FAULT_ENV`).

Checked per file: it appears exactly once in the run's outcome, extracted
(its records are in the shards), skipped or failed with a non-empty reason;
no written record holds a non-finite value; each hook-crashed file fails
with a "decoder crashed" / "decoder timed out" reason while the rest of its
shard is extracted. A batch whose extraction crashes or times out loses all
its files.
"""

import collections
import json
import os
import struct
import subprocess
import sys

import numpy as np

if __package__ in (None, ""):  # Run as the --driver script.
    sys.path.insert(0, os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
# pylint: disable-next=wrong-import-position
from soak_parts import common  # noqa: E402

NAME = "audio_fuzz"
SECTION = "fuzzing"

FULL_FILES = 10000
QUICK_FILES = 300
FULL_BATCH = 1000
"""Mutated files per extraction run in full mode (quick: one run)."""
HOOK_FAULTS_PER_BATCH = ("segv", "abort", "exit")
"""Decoder deaths injected into each extraction run."""
HOOK_PREFIX = "hook"
"""File-name prefix of the valid files the hook makes the decoder fail on."""
SEGMENT = (0.2, 0.4)
"""Each batch is also read as this segment of each file (seek, then cut)."""
HOOK_TIMEOUT_SECONDS = 2.0
"""Decoder timeout of the injected hang (one per run, see `_drive`)."""
RUN_TIMEOUT_SECONDS = 600
QUICK_RUN_TIMEOUT_SECONDS = 60

FORMATS = (
    # (name, extension, soundfile format, subtype, rate, channels, seconds)
    ("wav16", "wav", "WAV", "PCM_16", 16000, 1, 1.1),
    ("wav24s", "wav", "WAV", "PCM_24", 44100, 2, 1.0),
    ("wavf", "wav", "WAV", "FLOAT", 22050, 1, 1.0),
    ("wavu8", "wav", "WAV", "PCM_U8", 8000, 1, 1.2),
    ("flac16", "flac", "FLAC", "PCM_16", 16000, 1, 1.1),
    ("flac24s", "flac", "FLAC", "PCM_24", 48000, 2, 1.0),
    ("ogg", "ogg", "OGG", "VORBIS", 16000, 1, 1.1),
    ("oggs", "ogg", "OGG", "VORBIS", 44100, 2, 1.0),
    ("mp3", "mp3", "MP3", "MPEG_LAYER_III", 16000, 1, 1.2),
    ("mp3s", "mp3", "MP3", "MPEG_LAYER_III", 44100, 2, 1.0),
)

MUTATIONS = ("bit_flips", "byte_overwrite", "truncate", "delete_range",
             "header_field", "huge_size", "zero_length", "append_garbage",
             "other_format")


# --------------------------------------------------------------- sources ---


def write_sources(directory, rng):
    """One valid file per FORMATS entry (those soundfile can write).

    Returns:
      ({name: bytes}, [names of formats this libsndfile cannot write]).
    """
    import soundfile as sf  # pylint: disable=g-import-not-at-top
    os.makedirs(directory, exist_ok=True)
    available = sf.available_formats()
    sources, missing = {}, []
    for name, ext, fmt, subtype, rate, channels, seconds in FORMATS:
        if fmt not in available or subtype not in sf.available_subtypes(fmt):
            missing.append(name)
            continue
        t = np.arange(int(rate * seconds)) / float(rate)
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 3000) * t)
        x = x + 0.05 * rng.standard_normal(t.shape)
        x = np.stack([x] * channels, axis=1) if channels > 1 else x
        path = os.path.join(directory, "%s.%s" % (name, ext))
        sf.write(path, x.astype(np.float32), rate, format=fmt,
                 subtype=subtype)
        with open(path, "rb") as f:
            sources[name] = f.read()
    return sources, missing


# -------------------------------------------------------------- mutations ---


def _ogg_crc(page):
    """The CRC of an Ogg page (its CRC field zeroed): poly 0x04c11db7."""
    table = _ogg_crc.table
    if table is None:
        table = []
        for i in range(256):
            r = i << 24
            for _ in range(8):
                r = ((r << 1) ^ 0x04C11DB7) if r & 0x80000000 else r << 1
            table.append(r & 0xFFFFFFFF)
        _ogg_crc.table = table
    crc = 0
    for byte in page:
        crc = ((crc << 8) & 0xFFFFFFFF) ^ table[((crc >> 24) ^ byte) & 0xFF]
    return crc


_ogg_crc.table = None


def _ogg_pages(data):
    """(offset, length) of each Ogg page found."""
    pages, at = [], data.find(b"OggS")
    while 0 <= at and at + 27 <= len(data):
        count = data[at + 26]
        if at + 27 + count > len(data):
            break
        length = 27 + count + sum(data[at + 27:at + 27 + count])
        pages.append((at, length))
        at = data.find(b"OggS", at + max(length, 1))
    return pages


def _fix_ogg_crc(data, offset, length):
    page = bytearray(data[offset:offset + length])
    page[22:26] = b"\0\0\0\0"
    data[offset + 22:offset + 26] = struct.pack("<I", _ogg_crc(page))


def _wav_chunks(data):
    """{chunk id: offset of its header} of a RIFF/WAVE file."""
    chunks, at = {}, 12
    while at + 8 <= len(data):
        cid = bytes(data[at:at + 4])
        size = struct.unpack("<I", data[at + 4:at + 8])[0]
        chunks.setdefault(cid, at)
        at += 8 + size + (size & 1)
    return chunks


def _mp3_frames(data):
    """Offsets of plausible MPEG audio frame headers."""
    found = []
    for at in range(len(data) - 4):
        if data[at] == 0xFF and data[at + 1] & 0xE0 == 0xE0 and (
                data[at + 1] >> 1) & 3 and (data[at + 2] >> 4) != 15:
            found.append(at)
            if len(found) > 64:
                break
    return found


def _pick(rng, values):
    """One of `values` (rng.choice would turn big ints into floats)."""
    return values[int(rng.integers(len(values)))]


_SIZES = (0, 1, 3, 0x7FFFFFFF, 0x80000000, 0xFFFFFFF0, 0xFFFFFFFF)


def _wav_field(data, rng, huge):
    chunks = _wav_chunks(data)
    fmt, dat = chunks.get(b"fmt "), chunks.get(b"data")
    choices = ["riff_size"] + (["data_size"] if dat is not None else [])
    if not huge and fmt is not None:
        choices += ["format_tag", "channels", "rate", "byte_rate",
                    "block_align", "bits"]
    field = choices[rng.integers(len(choices))]
    if field in ("riff_size", "data_size"):
        at = 4 if field == "riff_size" else dat + 4
        value = (_pick(rng, _SIZES[3:]) if huge else _pick(
            rng, _SIZES + (len(data) - 1, len(data) * 2)))
        data[at:at + 4] = struct.pack("<I", value & 0xFFFFFFFF)
        return field
    offset, size, values = {
        "format_tag": (8, 2, (0, 2, 3, 6, 7, 0x11, 0x55, 0xFFFE, 0x1234)),
        "channels": (10, 2, (0, 2, 3, 8, 255, 1024, 65535)),
        "rate": (12, 4, (0, 1, 999, 8000, 96000, 768001, 0x7FFFFFFF,
                         0xFFFFFFFF)),
        "byte_rate": (16, 4, (0, 1, 0xFFFFFFFF)),
        "block_align": (20, 2, (0, 1, 3, 65535)),
        "bits": (22, 2, (0, 1, 7, 12, 20, 33, 64, 65535)),
    }[field]
    value = _pick(rng, values)
    data[fmt + offset:fmt + offset + size] = value.to_bytes(size, "little")
    return field


def _flac_field(data, rng, huge):
    if data[:4] != b"fLaC" or len(data) < 42:
        return None
    packed = int.from_bytes(data[18:26], "big")
    rate, channels = packed >> 44, (packed >> 41) & 7
    bits, total = (packed >> 36) & 31, packed & ((1 << 36) - 1)
    choices = (["total_samples"] if huge else
               ["total_samples", "rate", "channels", "bits", "block_size",
                "frame_size", "md5", "block_length"])
    field = choices[rng.integers(len(choices))]
    if field == "total_samples":
        total = ((1 << 36) - 1 - int(rng.integers(16)) if huge else
                 _pick(rng, (0, 1, total // 2, total * 2)))
    elif field == "rate":
        rate = _pick(rng, (0, 1, 999, 655350, (1 << 20) - 1))
    elif field == "channels":
        channels = int(rng.integers(8))
    elif field == "bits":
        bits = int(rng.integers(32))
    elif field == "block_size":
        sizes = (0, 1, 15, 16, 4096, 65535)
        data[8:12] = struct.pack(">HH", _pick(rng, sizes), _pick(rng, sizes))
        return field
    elif field == "frame_size":
        data[12:18] = rng.integers(0, 256, 6, dtype=np.uint8).tobytes()
        return field
    elif field == "md5":
        data[26:42] = rng.integers(0, 256, 16, dtype=np.uint8).tobytes()
        return field
    else:  # The metadata block's declared length.
        data[5:8] = _pick(rng, (0, 1, 33, 35, 0xFFFFFF)).to_bytes(3, "big")
        return field
    packed = (rate << 44) | (channels << 41) | (bits << 36) | total
    data[18:26] = packed.to_bytes(8, "big")
    return field


def _ogg_field(data, rng, huge):
    pages = _ogg_pages(data)
    if not pages:
        return None
    fields = (["granule"] if huge else
              ["granule", "serial", "sequence", "header_type", "version",
               "segments", "vorbis_channels", "vorbis_rate",
               "vorbis_blocksize"])
    field = fields[rng.integers(len(fields))]
    if field.startswith("vorbis"):
        offset, length = pages[0]
        packet = offset + 27 + data[offset + 26]
        if data[packet:packet + 7] != b"\x01vorbis":
            return None
        at, size, values = {
            "vorbis_channels": (11, 1, (0, 2, 9, 255)),
            "vorbis_rate": (12, 4, (0, 1, 0x7FFFFFFF, 0xFFFFFFFF)),
            "vorbis_blocksize": (28, 1, (0x00, 0x11, 0xBB, 0xFF)),
        }[field]
        data[packet + at:packet + at + size] = _pick(rng, values).to_bytes(
            size, "little")
    else:
        offset, length = pages[int(rng.integers(len(pages)))]
        at, size, values = {
            "granule": (6, 8, ((1 << 64) - 1, (1 << 63) - 1, 1 << 40) if huge
                        else (0, 1, (1 << 64) - 1, (1 << 62))),
            "serial": (14, 4, (0, 1, 0xFFFFFFFF)),
            "sequence": (18, 4, (0, 5, 0xFFFFFFFF)),
            "header_type": (5, 1, (0, 1, 2, 4, 7, 0xFF)),
            "version": (4, 1, (1, 0xFF)),
            "segments": (26, 1, (0, 1, 0xFF)),
        }[field]
        data[offset + at:offset + at + size] = _pick(rng, values).to_bytes(
            size, "little")
    fix = rng.random() < 0.7  # Else the page fails its CRC check.
    if fix:
        for offset, length in _ogg_pages(data):
            _fix_ogg_crc(data, offset, length)
    return field + ("+crc" if fix else "")


def _mp3_field(data, rng, huge):
    if huge:
        at = max(data.find(b"Xing"), data.find(b"Info"))
        if at >= 0 and at + 12 <= len(data):
            data[at + 8:at + 12] = struct.pack(">I", 0xFFFFFFFF)
            return "xing_frames"
        size = 0x0FFFFFFF  # ID3v2: 28-bit synchsafe size, all ones.
        data[0:0] = b"ID3\x04\x00\x00" + bytes(
            (size >> s) & 0x7F for s in (21, 14, 7, 0))
        return "id3_size"
    frames = _mp3_frames(data)
    if not frames:
        return None
    targets = frames if rng.random() < 0.3 else [
        frames[int(rng.integers(len(frames)))]]
    field = ("version", "layer", "bitrate", "rate", "mode", "emphasis")[
        int(rng.integers(6))]
    for at in targets:
        b1, b2, b3 = data[at + 1], data[at + 2], data[at + 3]
        value = int(rng.integers(16))
        if field == "version":
            b1 = (b1 & ~0x18) | ((value & 3) << 3)
        elif field == "layer":
            b1 = (b1 & ~0x06) | ((value & 3) << 1)
        elif field == "bitrate":
            b2 = (b2 & 0x0F) | (value << 4)
        elif field == "rate":
            b2 = (b2 & ~0x0C) | ((value & 3) << 2)
        elif field == "mode":
            b3 = (b3 & 0x3F) | ((value & 3) << 6)
        else:
            b3 = (b3 & ~0x03) | (value & 3)
        data[at + 1:at + 4] = bytes((b1 & 0xFF, b2 & 0xFF, b3 & 0xFF))
    return field + ("*all" if len(targets) > 1 else "")


_FIELD_MUTATORS = {"wav": _wav_field, "flac": _flac_field, "ogg": _ogg_field,
                   "mp3": _mp3_field}


def mutate(kind, source, ext, rng, others):
    """A mutated copy of `source` (bytes) and a detail string.

    Args:
      kind: one of MUTATIONS.
      source: the valid file's bytes.
      ext: its extension (selects the header mutator).
      rng: numpy Generator.
      others: {name: bytes} of the valid files (for other_format).

    Returns:
      (bytes, detail).
    """
    data = bytearray(source)
    n = len(data)
    if kind == "bit_flips":
        count = int(rng.integers(1, 33))
        # Half of the flips in the first 256 bytes, where the headers are.
        head = rng.random(count) < 0.5
        spots = np.where(head, rng.integers(0, min(n, 256), count),
                         rng.integers(0, n, count))
        for at in spots:
            data[int(at)] ^= 1 << int(rng.integers(8))
        return bytes(data), "%d bits" % count
    if kind == "byte_overwrite":
        length = int(rng.integers(1, 257))
        at = int(rng.integers(0, min(n, 512) if rng.random() < 0.5 else n))
        fill = _pick(rng, ("random", "zeros", "ones"))
        chunk = (rng.integers(0, 256, length, dtype=np.uint8).tobytes()
                 if fill == "random" else
                 (b"\0" if fill == "zeros" else b"\xff") * length)
        data[at:at + length] = chunk[:max(0, n - at)]
        return bytes(data), "%d %s bytes at %d" % (length, fill, at)
    if kind == "truncate":
        at = int(rng.integers(0, n))
        return bytes(data[:at]), "cut at %d of %d" % (at, n)
    if kind == "delete_range":
        at = int(rng.integers(0, n))
        length = int(rng.integers(1, max(2, n // 4)))
        del data[at:at + length]
        return bytes(data), "%d bytes at %d" % (length, at)
    if kind in ("header_field", "huge_size"):
        field = _FIELD_MUTATORS[ext](data, rng, kind == "huge_size")
        if field is None:  # Nothing to aim at: flip header bits instead.
            data[int(rng.integers(0, min(n, 64)))] ^= 0xFF
            field = "header byte"
        return bytes(data), field
    if kind == "zero_length":
        return b"", "0 bytes"
    if kind == "append_garbage":
        length = int(rng.integers(1, 8193))
        tail = (bytes(source[:length]) if rng.random() < 0.3 else
                rng.integers(0, 256, length, dtype=np.uint8).tobytes())
        return bytes(data) + tail, "%d bytes" % length
    if kind == "other_format":
        names = sorted(others)
        name = names[int(rng.integers(len(names)))]
        return others[name], "content of " + name
    raise ValueError("unknown mutation %r" % kind)


def write_batch(directory, sources, rng, first, count):
    """Writes `count` mutated files; returns {file name: (kind, format)}."""
    os.makedirs(directory, exist_ok=True)
    names = sorted(sources)
    ext_of = {f[0]: f[1] for f in FORMATS}
    made = {}
    for i in range(first, first + count):
        kind = MUTATIONS[i % len(MUTATIONS)]
        fmt = names[int(rng.integers(len(names)))]
        data, _ = mutate(kind, sources[fmt], ext_of[fmt], rng, sources)
        name = "m%05d_%s_%s.%s" % (i, kind, fmt, ext_of[fmt])
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
        made[name] = (kind, fmt)
    return made


def write_hooked(directory, sources, batch, actions=HOOK_FAULTS_PER_BATCH):
    """Valid files the decoder is made to fail on; {file name: action}."""
    os.makedirs(directory, exist_ok=True)
    ext_of = {f[0]: f[1] for f in FORMATS}
    names = sorted(sources)
    hooked = {}
    for j, action in enumerate(actions):
        fmt = names[(batch + j) % len(names)]
        name = "%s%02d_%s_%s.%s" % (HOOK_PREFIX, batch, action, fmt,
                                    ext_of[fmt])
        with open(os.path.join(directory, name), "wb") as f:
            f.write(sources[fmt])
        hooked[name] = action
    return hooked


# ---------------------------------------------------------------- driver ---


def _drive(config_path):
    """Child process: extract one batch, read back every record.

    Then `shards.process_files` (the extraction's core) on [a file the
    decoder hangs on, a valid file], with a short decoder timeout: the
    settings' way into `extract.run` goes through `shards.write_shard`.

    Writes next to `config_path` a JSON result: the manifest's failures and
    skipped, per source path its record count and non-finite record count,
    the hang's outcome, the run's timings and the decoder's counters.
    """
    # pylint: disable=g-import-not-at-top
    # Imported in the child only: the soak's process needs no TensorFlow.
    import tensorflow as tf
    from triplet_audio.features import decode_worker
    from triplet_audio.features import extract
    from triplet_audio.features import inputs
    from triplet_audio.features import records
    from triplet_audio.features import shards
    # pylint: enable=g-import-not-at-top
    with open(config_path) as f:
        settings = json.load(f)
    hang_paths = settings.pop("hang_paths")
    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    config = extract.ExtractConfig(**settings)
    summary = extract.run(config, progress_seconds=60.0)
    per_path = collections.defaultdict(lambda: [0, 0])
    for shard in records.list_shards(config.output_dir):
        for raw in tf.data.TFRecordDataset(shard).as_numpy_iterator():
            ex = records.example_to_numpy(tf.train.Example.FromString(raw))
            entry = per_path[ex[records.SOURCE_PATH]]
            entry[0] += 1
            entry[1] += int(not (np.isfinite(ex[records.LOGMEL]).all() and
                                 np.isfinite(ex[records.START_TIMES]).all()))
    # The same files as segments of longer recordings: the seek path.
    segment_items = [
        inputs.InputItem(os.path.join(config.input, name), name, (), "",
                         start=SEGMENT[0], end=SEGMENT[1])
        for name in sorted(os.listdir(config.input))
        if not name.startswith(HOOK_PREFIX)]
    segments = {}
    for serialized, r in shards.process_files(segment_items):
        segments[r.path] = [r.status, r.reason, sum(
            not np.isfinite(records.example_to_numpy(
                tf.train.Example.FromString(raw))[records.LOGMEL]).all()
            for raw in serialized)]
    hang = [[r.status, r.reason] for _, r in shards.process_files(
        [inputs.InputItem(p, os.path.basename(p), (), "")
         for p in hang_paths],
        decoder_timeout_seconds=HOOK_TIMEOUT_SECONDS)]
    decoder = decode_worker.shared_decoder()
    result = {
        "hang": hang,
        "segments": segments,
        "failures": summary["failures"], "skipped": summary["skipped"],
        "totals": summary["totals"], "records": dict(per_path),
        "seconds": summary["seconds"],
        "decoder": {"starts": decoder.starts, "crashes": decoder.crashes,
                    "timeouts": decoder.timeouts},
    }
    with open(config_path + ".result", "w") as f:
        json.dump(result, f)


def _run_batch(ctx, directory, out_dir, hooked, hang_paths, timeout):
    """Extracts one batch in a child; returns (result dict or None, why)."""
    config_path = out_dir + ".config.json"
    with open(config_path, "w") as f:
        json.dump({"input": directory, "output_dir": out_dir,
                   "num_shards": 4, "workers": 1,
                   "hang_paths": hang_paths}, f)
    env = common.child_env(**{
        "TRIPLET_AUDIO_DECODER_FAULT": ";".join(
            "%s:%s" % (action, name) for name, action in hooked.items())})
    log_path = out_dir + ".log"
    process = common.start([ctx.python, os.path.abspath(__file__),
                            "--driver", config_path], log_path, env=env)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, 9)
        process.wait()
        return None, "timed out after %d s: %s" % (timeout, common.tail(
            log_path, 300))
    if process.returncode != 0 or not os.path.exists(config_path +
                                                     ".result"):
        return None, "exit status %s: %s" % (process.returncode, common.tail(
            log_path, 600))
    with open(config_path + ".result") as f:
        return json.load(f), ""


def _outcomes(directory, result):
    """{file name: (outcome, reason)}; outcome 'lost' if unaccounted for."""
    seen = collections.defaultdict(list)
    for entry in result["failures"]:
        seen[entry["path"]].append(("failed", entry["error"]))
    for entry in result["skipped"]:
        seen[entry["path"]].append(("skipped", entry["reason"]))
    for path, (count, _) in result["records"].items():
        if count:
            seen[path].append(("extracted", ""))
    outcomes = {}
    for name in sorted(os.listdir(directory)):
        found = seen.get(os.path.join(directory, name), [])
        if len(found) == 1 and (found[0][0] == "extracted" or
                                found[0][1].strip()):
            outcomes[name] = found[0]
        else:  # Missing, listed twice, or with no reason.
            outcomes[name] = ("lost", repr(found))
    return outcomes


def _reason_kind(reason):
    """A failure reason without what names the file (for counting)."""
    return reason.split(":")[0].split(" in ")[0]


def run(ctx):
    """The part: see the module docstring."""
    rng = ctx.rng(NAME)
    total = QUICK_FILES if ctx.quick else FULL_FILES
    batch_size = total if ctx.quick else FULL_BATCH
    timeout = QUICK_RUN_TIMEOUT_SECONDS if ctx.quick else RUN_TIMEOUT_SECONDS
    sources, missing = write_sources(os.path.join(ctx.work_dir, "sources"),
                                     rng)
    notes = []
    if missing:
        notes.append("this libsndfile cannot write %s: not fuzzed" %
                     ", ".join(missing))
    per_kind = collections.defaultdict(collections.Counter)
    per_reason = collections.Counter()
    mutated = collections.Counter()  # injected / survived / lost
    segmented = collections.Counter()
    hooks = collections.Counter()
    nonfinite = 0
    records_read = 0
    real_decoder_failures = 0  # Crashes, hangs, exceptions: not the hook's.
    failed_runs = []
    seconds = 0.0
    restarts = 0
    starts = 0
    done = 0
    batch = 0
    lost_examples = []
    while done < total and (batch == 0 or ctx.time_left() > 0):
        count = min(batch_size, total - done)
        directory = os.path.join(ctx.work_dir, "batch%02d" % batch)
        made = write_batch(directory, sources, rng, done, count)
        hooked = write_hooked(directory, sources, batch)
        hang_dir = directory + "_hang"
        hang_name, = write_hooked(hang_dir, sources, batch, ("hang",))
        hang_paths = [os.path.join(hang_dir, hang_name),
                      os.path.join(hang_dir, "valid.wav")]
        with open(hang_paths[1], "wb") as f:
            f.write(sources[sorted(sources)[0]])
        result, why = _run_batch(
            ctx, directory, directory + "_out",
            dict(hooked, **{hang_name: "hang"}), hang_paths, timeout)
        mutated["injected"] += count
        hooks["injected"] += len(hooked) + 1
        if result is None:
            failed_runs.append("batch %d: %s" % (batch, why))
            mutated["lost"] += count
            segmented["injected"] += count
            segmented["lost"] += count
            hooks["lost"] += len(hooked) + 1
        else:
            for name in made:
                segmented["injected"] += 1
                status, reason, bad = result["segments"].get(
                    os.path.join(directory, name), (None, "", 0))
                if status == "ok" and not bad or status in (
                        "failed", "skipped") and reason.strip():
                    segmented["survived"] += 1
                    if reason.startswith("decoder "):
                        real_decoder_failures += 1
                else:
                    segmented["lost"] += 1
                    lost_examples.append("segment of %s: %r" % (
                        name, (status, reason, bad)))
            (hang_status, hang_reason), (after_status, _) = result["hang"]
            hang_ok = (hang_status == "failed" and after_status == "ok" and
                       hang_reason.startswith("decoder timed out"))
            hooks["survived" if hang_ok else "lost"] += 1
            seconds += result["seconds"]
            starts += result["decoder"]["starts"]
            restarts += result["decoder"]["starts"] - 1
            nonfinite += sum(bad for _, bad in result["records"].values())
            records_read += sum(n for n, _ in result["records"].values())
            outcomes = _outcomes(directory, result)
            for name, (outcome, reason) in outcomes.items():
                if name in hooked:
                    ok = outcome == "failed" and reason.startswith(
                        "decoder crashed")
                    hooks["survived" if ok else "lost"] += 1
                    continue
                kind = made[name][0]
                per_kind[kind][outcome] += 1
                if outcome == "lost":
                    mutated["lost"] += 1
                    lost_examples.append("%s: %s" % (name, reason))
                else:
                    mutated["survived"] += 1
                    if outcome != "extracted":
                        per_reason[_reason_kind(reason)] += 1
                    if reason.startswith("decoder "):
                        real_decoder_failures += 1
            bad_records = [p for p, (_, bad) in result["records"].items()
                           if bad]
            mutated["lost"] += len(bad_records)
        done += count
        batch += 1
    if done < total:
        notes.append("stopped at the deadline after %d of %d files" % (
            done, total))
    notes += failed_runs[:3] + lost_examples[:5]
    rows = [
        common.row("mutated audio files", mutated["injected"],
                   mutated["survived"], mutated["lost"],
                   "each extracted, skipped or failed with a reason; "
                   "%d extraction runs, %d crashed or hung" % (
                       batch, len(failed_runs))),
        common.row("mutated audio files read as segments",
                   segmented["injected"], segmented["survived"],
                   segmented["lost"],
                   "[%g, %g] s of each file through process_files (seek "
                   "and cut): a result with a reason, finite records" %
                   SEGMENT),
        common.row("decoder crashes and hangs (injected via hook)",
                   hooks["injected"], hooks["survived"], hooks["lost"],
                   "SIGSEGV, SIGABRT, exit 3 in each extraction run, and a "
                   "hang (%g s timeout) in process_files after it: the file "
                   "fails with the reason, the rest goes on" %
                   HOOK_TIMEOUT_SECONDS),
        common.row("records with non-finite values", mutated["injected"],
                   mutated["injected"] - nonfinite, nonfinite,
                   "every record written from a mutated file read back"),
    ]
    outcome_totals = collections.Counter()
    for counter in per_kind.values():
        outcome_totals.update(counter)
    figures = {
        "files": done,
        "records_read_back": records_read,
        "extraction_seconds": round(seconds, 2),
        "files_per_second": round(done / seconds, 1) if seconds else None,
        "outcomes": dict(outcome_totals),
        "outcomes_per_mutation": {k: dict(v) for k, v in
                                  sorted(per_kind.items())},
        "failure_kinds": dict(per_reason.most_common()),
        "decoder_starts": starts,
        "decoder_restarts": restarts,
        "decoder_failures_on_mutated_files": real_decoder_failures,
        "formats": sorted(sources),
    }
    return [common.part(SECTION, rows, figures, notes)]


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--driver":
        sys.path.insert(0, common.REPO_ROOT)
        _drive(sys.argv[2])
    else:
        sys.exit("usage: audio_fuzz.py --driver CONFIG_JSON (internal)")
