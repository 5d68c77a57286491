"""JSON files written atomically, and a run's resolved config (`config.json`).

Every stage that produces a directory (a corpus, a training run, an export,
an evaluation) writes its JSON through `write_json`: to a temporary name,
flushed and fsynced, then renamed, so a killed job leaves the old file or the
new one, never half of one. `to_jsonable` is the one cleaning of values for
strict JSON (dataclasses, NumPy, tuples; inf as "inf", NaN as null).

Every stage that produces a directory writes the configuration it actually
used there (`write_config`); later stages (export, embed, evaluate) read it
back (`read_config`) so a user never repeats a setting.

No TensorFlow here.
"""

import dataclasses
import json
import math
import os

CONFIG_NAME = "config.json"
TEMP_SUFFIX = ".incomplete"


def to_jsonable(value):
    """A strict-JSON copy of `value`.

    Dataclasses (nested) become dicts, tuples lists, NumPy scalars and arrays
    Python values; +-inf become "inf" / "-inf" (a config's unbounded dt) and
    NaN becomes None (strict JSON has no NaN; jq and browsers reject it).
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name))
                for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if hasattr(value, "tolist") and hasattr(value, "dtype"):  # NumPy
        return to_jsonable(value.tolist())
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
    return value


def write_json(path, value, indent=2, fsync=True):
    """Atomically writes `value` (cleaned by `to_jsonable`) as JSON to `path`.

    Args:
      path: destination; its directory is created if missing.
      value: anything `to_jsonable` accepts.
      indent: JSON indentation.
      fsync: flush the file to disk before the rename (what a resumable job
        relies on after a crash).

    Returns:
      path.
    """
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    tmp = path + TEMP_SUFFIX
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(to_jsonable(value), f, indent=indent, sort_keys=True,
                  allow_nan=False)
        f.write("\n")
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_json(path):
    """Reads a JSON file.

    Raises:
      FileNotFoundError: naming the file.
      ValueError: naming the file when it is not valid JSON.
    """
    if not os.path.exists(path):
        raise FileNotFoundError("%s does not exist" % path)
    with open(path, encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError("%s is not valid JSON: %s" % (path, e)) from e


def write_config(directory, config, name=CONFIG_NAME):
    """Atomically writes `config` (a dataclass or dict) into `directory`.

    Returns:
      the path written.
    """
    return write_json(os.path.join(directory, name), config)


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
    return read_json(path)
