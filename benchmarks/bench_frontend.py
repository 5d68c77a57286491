"""Throughput of the TF log-mel front end against the NumPy reference.

Loads about ten minutes of real speech (the FSDD recordings, 8 kHz, resampled
to 16 kHz with soxr and concatenated), then times on that same waveform:

  * `frontend.windows_fn` (the graph extraction uses) with one intra-op
    thread, for a per-core figure, and with TensorFlow's default threads;
  * the NumPy reference of tests/numpy_frontend.py with one BLAS thread, in
    float32 (TF's precision) and in float64 (the precision the tests compare
    against). The TF / NumPy ratio is taken against the faster of the two:
    NumPy's FFT is not always faster in float32.

Thread pools can only be sized before a library starts them, so each
configuration runs in its own subprocess of this script. After one warm-up
run each, the configurations take turns, one run at a time, for --repeats
rounds, so that load from other processes on a shared machine drifts over all
of them alike rather than penalising whichever ran last. Both the median and
the minimum (the least disturbed run) are reported; targets are checked on
the minimum.

Prints audio seconds per wall second (real-time factor), the same per core,
and the TF / NumPy speed ratio, each beside its target.

  .venv/bin/python benchmarks/bench_frontend.py [--data_dir=DIR]
      [--minutes=10] [--repeats=7] [--output_json=PATH]
"""

import glob
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO_ROOT)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))

from triplet_audio import constants as C  # pylint: disable=g-import-not-at-top

TARGET_TF_OVER_NUMPY = 5.0
TARGET_RTF_PER_CORE = 2000.0

_DATA_DIR = flags.DEFINE_string(
    "data_dir",
    os.path.join(REPO_ROOT, os.pardir, "shared", "data", "fsdd", "recordings"),
    "Directory of audio files (any format libsndfile reads) to benchmark on. "
    "If it is missing or empty, synthetic pink-ish noise is used instead.")
_MINUTES = flags.DEFINE_float(
    "minutes", 10.0, "Minutes of audio to concatenate and time.")
_REPEATS = flags.DEFINE_integer(
    "repeats", 7, "Timed runs per configuration, taken in turns.")
_OUTPUT_JSON = flags.DEFINE_string(
    "output_json", None, "If set, also write the figures as JSON here.")
_SEED = flags.DEFINE_integer(
    "seed", 0, "Seed for the order of the files and for synthetic audio.")
# Internal: set when this script runs as one timed configuration.
_WORKER = flags.DEFINE_enum(
    "worker", None, ["tf", "numpy", "tf_fft", "numpy_fft"],
    "Internal: run one configuration.")
_THREADS = flags.DEFINE_integer(
    "threads", 0, "Internal: intra-op / BLAS threads (0: library default).")
_DTYPE = flags.DEFINE_enum(
    "dtype", "float32", ["float32", "float64"], "Internal: NumPy dtype.")
_AUDIO_NPY = flags.DEFINE_string("audio_npy", None, "Internal: input.")
_RESULT_NPY = flags.DEFINE_string("result_npy", None, "Internal: output.")


def _load_audio(data_dir, seconds, seed):
    """Returns (float32 16 kHz waveform of `seconds`, description)."""
    # Only the parent process decodes audio; the timed workers skip these.
    import soundfile  # pylint: disable=g-import-not-at-top
    import soxr  # pylint: disable=g-import-not-at-top

    paths = sorted(p for p in glob.glob(os.path.join(data_dir, "*"))
                   if os.path.isfile(p)) if os.path.isdir(data_dir) else []
    # A seeded order, so ten minutes cover every digit and speaker.
    paths = [paths[i] for i in np.random.default_rng(seed).permutation(
        len(paths))]
    needed = int(seconds * C.SAMPLE_RATE)
    pieces, total, used = [], 0, 0
    for path in paths:
        try:
            audio, rate = soundfile.read(path, dtype="float32", always_2d=True)
        except RuntimeError:
            continue  # not audio
        audio = audio.mean(axis=1)
        if rate != C.SAMPLE_RATE:
            audio = soxr.resample(audio, rate, C.SAMPLE_RATE)
        pieces.append(audio.astype(np.float32))
        total += audio.shape[0]
        used += 1
        if total >= needed:
            break
    if pieces:
        audio = np.concatenate(pieces)
        repeats = -(-needed // audio.shape[0])  # ceil: loop short corpora
        return (np.tile(audio, repeats)[:needed],
                "%d files from %s, resampled to %d Hz%s" % (
                    used, data_dir, C.SAMPLE_RATE,
                    ", looped %d times" % repeats if repeats > 1 else ""))
    # No real audio: fall back to noise with a 1/f-ish spectrum.
    rng = np.random.default_rng(seed)
    white = rng.standard_normal(needed)
    pink = np.fft.irfft(np.fft.rfft(white) / np.sqrt(
        np.maximum(np.fft.rfftfreq(needed), 1.0 / needed)), n=needed)
    return ((0.3 * pink / np.abs(pink).max()).astype(np.float32),
            "synthetic noise (no usable audio in %s)" % data_dir)


def _run_worker():
    """Serves timed runs of one configuration over stdin / stdout.

    Prints "ready" after a warm-up run, then one line with the wall and CPU
    seconds of a fresh run for every "run" line read; on "quit" saves the
    last output.
    """
    waveform = np.load(_AUDIO_NPY.value)
    if _WORKER.value.endswith("_fft"):
        # The FFT alone, on the front end's windowed 512-sample frames: the
        # floor both implementations share.
        import numpy_frontend  # pylint: disable=g-import-not-at-top
        frames = (numpy_frontend.frame_signal(waveform) *
                  numpy_frontend.periodic_hann()).astype(np.float32)
        waveform = np.zeros((frames.shape[0], C.FFT_LENGTH), np.float32)
        waveform[:, :C.STFT_WINDOW_SAMPLES] = frames
    if _WORKER.value == "tf_fft":
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        # Only a row comes back to NumPy: the rest stays a TF tensor, as the
        # spectrum does inside the front end.
        rfft = tf.function(lambda x: tf.signal.rfft(x)[:1])

        def fn(x):
            return np.abs(rfft(x).numpy())
    elif _WORKER.value == "numpy_fft":
        def fn(x):
            return np.abs(np.fft.rfft(x, axis=-1)[:1])
    elif _WORKER.value == "tf":
        import tensorflow as tf  # pylint: disable=g-import-not-at-top
        if _THREADS.value:
            tf.config.threading.set_intra_op_parallelism_threads(
                _THREADS.value)
            tf.config.threading.set_inter_op_parallelism_threads(
                _THREADS.value)
        # pylint: disable-next=g-import-not-at-top
        from triplet_audio.features import frontend

        def fn(x):
            return frontend.windows_fn(x).numpy()
    else:
        import numpy_frontend  # pylint: disable=g-import-not-at-top
        reference = numpy_frontend.NumpyFrontend(np.dtype(_DTYPE.value))

        def fn(x):
            return reference.waveform_to_windows(x, pad_short=False)
    out = fn(waveform)  # warm-up: tracing, thread pools, page faults
    print("ready", flush=True)
    for line in sys.stdin:
        if line.strip() != "run":
            break
        start, start_cpu = time.perf_counter(), time.process_time()
        out = fn(waveform)
        print(time.perf_counter() - start, time.process_time() - start_cpu,
              flush=True)
    np.save(_RESULT_NPY.value, out.astype(np.float32))


class _Worker:
    """One configuration running in a subprocess of this script."""

    def __init__(self, workdir, name, worker, threads, dtype):
        self.name = name
        self.result = os.path.join(workdir, name + ".npy")
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2",
                   CUDA_VISIBLE_DEVICES="")
        if threads:
            # BLAS / OpenMP pools read these when they start.
            for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                        "MKL_NUM_THREADS"):
                env[var] = str(threads)
        self._stderr = open(os.path.join(workdir, name + ".log"), "w+")
        self._proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--worker=" + worker,
             "--threads=%d" % threads, "--dtype=" + dtype,
             "--audio_npy=" + os.path.join(workdir, "audio.npy"),
             "--result_npy=" + self.result],
            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self._stderr, text=True)

    def _read_line(self):
        line = self._proc.stdout.readline()
        if not line:
            self._stderr.seek(0)
            sys.exit("%s failed:\n%s" % (self.name,
                                          self._stderr.read()[-3000:]))
        return line.strip()

    def wait_ready(self):
        while self._read_line() != "ready":
            pass

    def run_once(self):
        self._proc.stdin.write("run\n")
        self._proc.stdin.flush()
        wall, cpu = self._read_line().split()
        return float(wall), float(cpu)

    def finish(self):
        self._proc.stdin.write("quit\n")
        self._proc.stdin.close()
        self._proc.wait()
        self._stderr.close()
        return np.load(self.result)


def _cpu_model():
    # Imported here: benchmarks/ is on sys.path when a benchmark runs as a
    # script, which is the only way they run.
    from machine import cpu_model  # pylint: disable=g-import-not-at-top
    return cpu_model()


def _run_benchmark():
    seconds_of_audio = 60.0 * _MINUTES.value
    waveform, source = _load_audio(_DATA_DIR.value, seconds_of_audio,
                                   _SEED.value)
    cores = len(os.sched_getaffinity(0))
    configs = [  # name, worker, threads, dtype, cores it may use
        ("tf_1_thread", "tf", 1, "float32", 1),
        ("tf_default_threads", "tf", 0, "float32", cores),
        ("numpy_float32_1_thread", "numpy", 1, "float32", 1),
        ("numpy_float64_1_thread", "numpy", 1, "float64", 1),
        ("tf_rfft_only_1_thread", "tf_fft", 1, "float32", 1),
        ("numpy_rfft_only_1_thread", "numpy_fft", 1, "float32", 1),
    ]
    times = {name: [] for name, *_ in configs}
    cpu_times = {name: [] for name, *_ in configs}
    outputs = {}
    with tempfile.TemporaryDirectory() as workdir:
        np.save(os.path.join(workdir, "audio.npy"), waveform)
        workers = [_Worker(workdir, name, worker, threads, dtype)
                   for name, worker, threads, dtype, _ in configs]
        for worker in workers:
            worker.wait_ready()
        for _ in range(_REPEATS.value):
            for worker in workers:
                wall, cpu = worker.run_once()
                times[worker.name].append(wall)
                cpu_times[worker.name].append(cpu)
        for worker in workers:
            outputs[worker.name] = worker.finish()
    figures = {}
    for name, _, _, _, used_cores in configs:
        best = min(times[name])
        figures[name] = {
            "seconds": times[name],
            "median_seconds": statistics.median(times[name]),
            "min_seconds": best,
            "realtime_factor": seconds_of_audio / best,
            "realtime_factor_per_core": seconds_of_audio / best / used_cores,
            "cores": used_cores,
            "cpu_seconds": cpu_times[name],
            # Audio seconds per CPU second: less sensitive than wall time to
            # other processes competing for the cores.
            "realtime_factor_per_cpu_second":
                seconds_of_audio / min(cpu_times[name]),
        }
    reference = outputs["numpy_float64_1_thread"]
    tf_out = outputs["tf_1_thread"]
    max_abs_diff = (float(np.max(np.abs(tf_out - reference)))
                    if tf_out.shape == reference.shape else float("nan"))

    tf1 = figures["tf_1_thread"]["min_seconds"]
    ratio_f32 = figures["numpy_float32_1_thread"]["min_seconds"] / tf1
    ratio_f64 = figures["numpy_float64_1_thread"]["min_seconds"] / tf1
    ratio = min(ratio_f32, ratio_f64)
    fastest_numpy_per_cpu_second = max(
        figures[name]["realtime_factor_per_cpu_second"]
        for name in ("numpy_float32_1_thread", "numpy_float64_1_thread"))
    cpu_ratio = (figures["tf_1_thread"]["realtime_factor_per_cpu_second"] /
                 fastest_numpy_per_cpu_second)
    per_core = figures["tf_1_thread"]["realtime_factor_per_core"]
    summary = {
        "audio": source,
        "audio_seconds": seconds_of_audio,
        "windows": int(tf_out.shape[0]),
        "cpu": _cpu_model(),
        "cores_available": cores,
        "repeats": _REPEATS.value,
        "configs": figures,
        "tf_over_numpy": ratio,
        "tf_over_numpy_cpu_seconds": cpu_ratio,
        "tf_over_numpy_float32": ratio_f32,
        "tf_over_numpy_float64": ratio_f64,
        "tf_per_core_realtime_factor": per_core,
        "targets": {"tf_over_numpy": TARGET_TF_OVER_NUMPY,
                    "realtime_factor_per_core": TARGET_RTF_PER_CORE},
        "meets_targets": {
            "tf_over_numpy": ratio >= TARGET_TF_OVER_NUMPY,
            "realtime_factor_per_core": per_core >= TARGET_RTF_PER_CORE},
        "tf_vs_numpy_float64_max_abs_diff": max_abs_diff,
        "load_average_1min": os.getloadavg()[0],
    }

    def verdict(ok):
        return "meets" if ok else "MISSES"

    print("front end on %.0f s of audio: %s" % (seconds_of_audio, source))
    print("%d windows of %dx%d; %s, %d cores available; %d interleaved "
          "runs each" % (tf_out.shape[0], C.WINDOW_FRAMES, C.NUM_MEL_BANDS,
                         summary["cpu"], cores, _REPEATS.value))
    print()
    print("%-24s %8s %9s %12s %14s %14s" % (
        "config", "min s", "median s", "x real time", "x RT per core",
        "x RT per CPU s"))
    for name, fig in figures.items():
        print("%-24s %8.3f %9.3f %12.0f %14.0f %14.0f" % (
            name, fig["min_seconds"], fig["median_seconds"],
            fig["realtime_factor"], fig["realtime_factor_per_core"],
            fig["realtime_factor_per_cpu_second"]))
    print("(real-time factors from the fastest run; load average %.1f)" %
          os.getloadavg()[0])
    print()
    print("TF per core:          %8.0f x real time   (target >= %.0f x: %s)" % (
        per_core, TARGET_RTF_PER_CORE,
        verdict(summary["meets_targets"]["realtime_factor_per_core"])))
    print("TF / faster NumPy:    %8.2f x             (target >= %.0f x: %s)" % (
        ratio, TARGET_TF_OVER_NUMPY,
        verdict(summary["meets_targets"]["tf_over_numpy"])))
    print("  (TF / NumPy float32 %.2f x, TF / NumPy float64 %.2f x)" % (
        ratio_f32, ratio_f64))
    # Wall time on a shared machine counts other processes' turns; CPU
    # seconds do not, so repeat the per-core check on those.
    print("TF per CPU second:    %8.0f x real time   (target >= %.0f x: %s)" % (
        figures["tf_1_thread"]["realtime_factor_per_cpu_second"],
        TARGET_RTF_PER_CORE,
        verdict(figures["tf_1_thread"]["realtime_factor_per_cpu_second"] >=
                TARGET_RTF_PER_CORE)))
    print("TF / faster NumPy, CPU seconds: %5.2f x   (target >= %.0f x: %s)" % (
        cpu_ratio, TARGET_TF_OVER_NUMPY,
        verdict(cpu_ratio >= TARGET_TF_OVER_NUMPY)))
    print("max |TF - NumPy float64| log-mel: %.2e" % max_abs_diff)
    fft_share = figures["tf_rfft_only_1_thread"]["min_seconds"] / tf1
    fft_ratio = (figures["numpy_rfft_only_1_thread"]["min_seconds"] /
                 figures["tf_rfft_only_1_thread"]["min_seconds"])
    summary["tf_rfft_share_of_front_end"] = fft_share
    summary["tf_over_numpy_rfft_only"] = fft_ratio
    print("rfft alone: %.0f%% of the TF front end's time; TF / NumPy on the "
          "rfft alone %.2f x" % (100 * fft_share, fft_ratio))
    print("  (the FFT both share bounds the ratio: with every other step "
          "free, TF would be %.1f x NumPy)" % (
              figures["numpy_float32_1_thread"]["min_seconds"] /
              figures["tf_rfft_only_1_thread"]["min_seconds"]))
    if _OUTPUT_JSON.value:
        with open(_OUTPUT_JSON.value, "w") as f:
            json.dump(summary, f, indent=2)
        print("wrote", _OUTPUT_JSON.value)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError("unexpected arguments: %s" % " ".join(argv[1:]))
    if _WORKER.value:
        _run_worker()
    else:
        _run_benchmark()


if __name__ == "__main__":
    app.run(main)
