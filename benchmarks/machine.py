"""Facts about the machine a benchmark ran on, printed beside its figures."""


def cpu_model():
    """The CPU's model name from /proc/cpuinfo ("unknown" elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def write_json(path, summary):
    """Writes a benchmark's figures to `path` (nothing when path is empty)."""
    import json  # pylint: disable=g-import-not-at-top
    if not path:
        return
    with open(path, "w") as f:
        json.dump(summary, f, indent=2)
    print("wrote", path)
