"""Config dataclass fields that carry their flag: default, help, bounds once.

A config class declares each setting once, with `setting(...)`:

    @dataclasses.dataclass
    class SamplerConfig:
        noise_sigma: float = setting(0.5, "Noise sampler: std of eps.",
                                     lower_bound=0.0)

and the command line is derived from it: `define_flags(SamplerConfig)`
defines `--noise_sigma` with that default, help and bound;
`config_from_flags(SamplerConfig)` builds the instance from the parsed flags
(its `__post_init__` validates, naming the flag). A field whose type is a
config dataclass is a part: its flags are defined and read with the parent's
(a demo config is corpus + evaluation + training, never restated). A field
without `setting` metadata (e.g. a path set by the program) has no flag.

Flags shared by several binaries (--seed, --output_dir) are defined once per
process: a second `define_flags` that names an existing flag reuses it.

No TensorFlow here: `--help` and flag errors never wait for it.
"""

import dataclasses
import math

from absl import flags

FLAGS = flags.FLAGS

_META = "triplet_audio.setting"


@dataclasses.dataclass(frozen=True)
class _Setting:
    help: str
    flag: str = None
    choices: tuple = None
    lower_bound: float = None
    upper_bound: float = None
    # Converts a flag value to the field's value (e.g. "a=1,b=2" -> dict) and
    # back to the flag's text for its default.
    parse: object = None
    format: object = None
    kind: str = None


def setting(default=dataclasses.MISSING, help="", *, flag=None, choices=None,
            lower_bound=None, upper_bound=None, default_factory=None,
            parse=None, format=None, kind=None):  # pylint: disable=redefined-builtin
    """A dataclass field that is also a command-line flag.

    Args:
      default: the default value (its one home).
      help: the flag's help text.
      flag: the flag's name when it differs from the field's.
      choices: allowed values (an enum flag).
      lower_bound, upper_bound: numeric bounds checked by absl.
      default_factory: for mutable defaults.
      parse: callable flag value -> field value.
      format: callable field value -> flag text (for the flag's default).
      kind: "list" for a comma-separated list flag, "float"/"int"/"bool"/"str"
        when the default does not say (e.g. a None default).

    Returns:
      a `dataclasses.field`.
    """
    meta = {_META: _Setting(help=help, flag=flag,
                            choices=tuple(choices) if choices else None,
                            lower_bound=lower_bound, upper_bound=upper_bound,
                            parse=parse, format=format, kind=kind)}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory,
                                 metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _setting(field):
    return field.metadata.get(_META)


def _is_part(field):
    # A field typed by a config dataclass: its flags are its parent's.
    return isinstance(field.type, type) and dataclasses.is_dataclass(
        field.type)


def flag_name(field):
    """The command-line name of a config field."""
    meta = _setting(field)
    return (meta and meta.flag) or field.name


def _default(field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return None


def _kind(field, default):
    meta = _setting(field)
    if meta.kind:
        return meta.kind
    if meta.choices:
        return "enum"
    for kind, types in (("bool", (bool,)), ("int", (int,)),
                        ("float", (float,)), ("str", (str,))):
        if isinstance(default, types):
            return kind
    typename = getattr(field.type, "__name__", str(field.type))
    return {"int": "int", "float": "float", "bool": "bool"}.get(typename,
                                                               "str")


def define_flags(config_class, flag_values=FLAGS, exclude=(), only=None):
    """Defines a flag for every setting of `config_class` and its parts.

    Args:
      config_class: a config dataclass.
      flag_values: the `FlagValues` to define into.
      exclude: field names (of any level) left without a flag.
      only: if given, define the flags of these field names alone.
    """
    for field in dataclasses.fields(config_class):
        if field.name in exclude or (
                only is not None and field.name not in only and
                not _is_part(field)):
            continue
        if _is_part(field):
            define_flags(field.type, flag_values, exclude, only)
            continue
        meta = _setting(field)
        if meta is None:
            continue
        name = flag_name(field)
        if name in flag_values:
            continue  # shared with another group: one definition per process
        default = _default(field)
        kind = _kind(field, default)
        if meta.format is not None:
            default = meta.format(default)
        elif isinstance(default, float) and math.isinf(default):
            default = "inf" if default > 0 else "-inf"
        bounds = {k: v for k, v in (("lower_bound", meta.lower_bound),
                                    ("upper_bound", meta.upper_bound))
                  if v is not None}
        if kind == "enum":
            flags.DEFINE_enum(name, default, list(meta.choices), meta.help,
                              flag_values=flag_values)
        elif kind == "list":
            flags.DEFINE_list(name, list(default or ()), meta.help,
                              flag_values=flag_values)
        elif kind == "bool":
            flags.DEFINE_boolean(name, default, meta.help,
                                 flag_values=flag_values)
        elif kind == "int":
            flags.DEFINE_integer(name, default, meta.help,
                                 flag_values=flag_values, **bounds)
        elif kind == "float":
            flags.DEFINE_float(name, default, meta.help,
                               flag_values=flag_values, **bounds)
        else:
            flags.DEFINE_string(name, default, meta.help,
                                flag_values=flag_values)


def config_from_flags(config_class, flag_values=FLAGS, exclude=(),
                      **overrides):
    """Builds `config_class` (and its parts) from the parsed flags.

    Args:
      config_class: a config dataclass.
      flag_values: parsed `FlagValues`.
      exclude: field names left at their defaults (as in `define_flags`).
      **overrides: field values that do not come from flags.

    Returns:
      the config instance (its `__post_init__` validates it).
    """
    kwargs = {}
    for field in dataclasses.fields(config_class):
        if field.name in overrides:
            kwargs[field.name] = overrides[field.name]
        elif field.name in exclude:
            continue
        elif _is_part(field):
            kwargs[field.name] = config_from_flags(field.type, flag_values,
                                                   exclude)
        elif _setting(field) is not None:
            value = flag_values[flag_name(field)].value
            meta = _setting(field)
            if meta.parse is not None:
                value = meta.parse(value)
            elif meta.kind == "list":
                value = tuple(value or ())
            kwargs[field.name] = value
    return config_class(**kwargs)


def zero_is_none(value):
    """Flag parse for an optional count: 0 on the command line means None."""
    return value or None


def none_is_zero(value):
    """Flag format of an optional count (the inverse of `zero_is_none`)."""
    return 0 if value is None else value


def is_integer(value):
    """Whether `value` is an integer (a bool is not; 3.0 is)."""
    try:
        return not isinstance(value, bool) and int(value) == value
    except (TypeError, ValueError):
        return False


def help_of(config_class, name):
    """The help text of field `name` (for docs and derived flags)."""
    for field in dataclasses.fields(config_class):
        if field.name == name and _setting(field):
            return _setting(field).help
    raise KeyError(name)
