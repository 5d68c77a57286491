"""What the soak's parts share: the context they run in, and the row format.

A part is a function `run(ctx)` in one of this package's modules. It injects
faults of one kind, checks what the project guarantees after each, and
returns one or more `part(...)` dicts. A row says, for one kind of fault:

  * injected: faults injected (kills, mutated files, corrupted shards,
    malformed requests, ...);
  * survived: of those, how many the job came through as guaranteed (it
    resumed, named the bad input, refused the request with a clear error,
    ...);
  * lost: units of finished work lost or silently wrong (checkpoints that
    would not load, shards that differ from a clean run's, records skipped
    but not counted, crashed servers, ...): the figure that must be 0.

`ok` of a row is `survived == injected and lost == 0`; soak.py exits 1 when
any row is not ok.
"""

import dataclasses
import os
import subprocess
import sys
import time

import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

SECTIONS = ("kills", "fuzzing", "corrupt_records", "serving", "resources")
"""The sections of the report, in order (the issue's fault kinds)."""


@dataclasses.dataclass
class Context:
    """Where and how long a part runs.

    Attributes:
      work_dir: a fresh directory for this part's files (deleted after the
        soak unless --keep_work_dir).
      seed: the soak's seed; a part derives its own generator from it.
      quick: the CI mode: a few faults of each kind, the whole soak in under
        3 minutes on 2 cores.
      deadline: time.monotonic() value by which the part should stop
        injecting (it still finishes and checks the fault in hand).
      python: the interpreter to run the binaries with.
    """
    work_dir: str
    seed: int
    quick: bool
    deadline: float
    python: str = sys.executable

    def rng(self, salt):
        """A numpy Generator of its own for each part (`salt`: its name)."""
        return np.random.default_rng(
            [self.seed, sum(ord(c) * 31 ** i for i, c in enumerate(salt))
             % (2 ** 31)])

    def time_left(self):
        return self.deadline - time.monotonic()


def row(fault, injected, survived, lost, detail=""):
    """One row of the table (see the module docstring)."""
    return {"fault": fault, "injected": int(injected),
            "survived": int(survived), "lost": int(lost), "detail": detail,
            "ok": int(survived) == int(injected) and int(lost) == 0}


def part(section, rows, figures=None, notes=()):
    """What a part returns: its section, rows, figures and notes.

    Args:
      section: one of SECTIONS.
      rows: list of `row(...)` dicts.
      figures: dict of measured values (JSON-able), e.g. peak RSS.
      notes: strings for the report (what was not checked, and why).
    """
    if section not in SECTIONS:
        raise ValueError("unknown section %r (one of %s)" % (section,
                                                              SECTIONS))
    return {"section": section, "rows": list(rows),
            "figures": dict(figures or {}), "notes": list(notes)}


def child_env(**extra):
    """The environment of a child binary: CPU only, TF quiet."""
    env = dict(os.environ)
    env.update(CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=REPO_ROOT + os.pathsep + env.get("PYTHONPATH", ""))
    env.update(extra)
    return env


def binary(name):
    """The path of bin/<name>."""
    return os.path.join(REPO_ROOT, "bin", name)


def start(command, log_path, new_group=True, **kwargs):
    """Starts a child with its output in `log_path` (a pipe could fill up).

    new_group=True puts it in a process group of its own, so
    `os.killpg(p.pid, sig)` reaches its workers too.
    """
    log = open(log_path, "ab")
    try:
        return subprocess.Popen(command, cwd=REPO_ROOT, stdout=log,
                                stderr=subprocess.STDOUT,
                                env=kwargs.pop("env", None) or child_env(),
                                start_new_session=new_group, **kwargs)
    finally:
        log.close()


def tail(path, chars=2000):
    """The end of a log file ('' when missing)."""
    try:
        with open(path, errors="replace") as f:
            return f.read()[-chars:]
    except OSError:
        return ""


def file_size_limit(limit):
    """A `preexec_fn` that caps the files a child may write at `limit` bytes.

    A full disk, simulated: a write past the limit fails with EFBIG (as a
    full disk's fails with ENOSPC). Python ignores SIGXFSZ from its start, so
    a Python child gets the error instead of being killed. Only the rlimit is
    set here: the child is forked from a threaded process.
    """
    import resource  # pylint: disable=g-import-not-at-top

    def preexec():
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return preexec


def dir_bytes(directory):
    """{file name: bytes} of every file in `directory` (to compare corpora)."""
    out = {}
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as f:
            out[name] = f.read()
    return out


def write_wavs(directory, count, seconds, seed, rate=16000):
    """`count` short noisy-tone WAV files (16-bit) for extraction runs.

    Returns:
      sorted list of paths.
    """
    import soundfile as sf  # pylint: disable=g-import-not-at-top
    os.makedirs(directory, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        t = np.arange(int(seconds * rate)) / rate
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(100, 2000) * t)
        x += 0.05 * rng.standard_normal(t.shape)
        path = os.path.join(directory, "clip_%04d.wav" % i)
        sf.write(path, x.astype(np.float32), rate, subtype="PCM_16")
        paths.append(path)
    return sorted(paths)
