"""Writing and reading a run's resolved configuration (`config.json`).

Every stage that produces a directory (a training run, an export) writes the
configuration it actually used there; later stages (export, embed, evaluate)
read it back so a user never repeats a setting.
"""

import dataclasses
import json
import os

CONFIG_NAME = "config.json"


def to_jsonable(value):
    """Converts dataclasses (nested), tuples and floats like inf to JSON types."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name))
                for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return "inf" if value > 0 else "-inf"
    return value


def write_config(directory, config, name=CONFIG_NAME):
    """Atomically writes `config` (a dataclass or dict) as JSON into directory.

    Args:
      directory: the run directory (created if missing).
      config: dataclass instance or dict.
      name: file name.

    Returns:
      the path written.
    """
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, name)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(to_jsonable(config), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)
    return path


def read_config(directory, name=CONFIG_NAME):
    """Reads a run directory's config as a dict.

    Raises:
      FileNotFoundError: naming the directory when it has no config.
    """
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        raise FileNotFoundError(
            "%s has no %s: is it a triplet-audio run directory?" %
            (directory, name))
    with open(path) as f:
        return json.load(f)
