"""config.fields: flags derived from config dataclasses, and back."""

import dataclasses
import math

from absl import flags
import pytest

from triplet_audio.config import fields
from triplet_audio.config import sampling as sampling_config


@dataclasses.dataclass
class Part:
    rate: float = fields.setting(0.5, "A rate.", lower_bound=0.0)
    names: tuple = fields.setting((), "Names.", kind="list")


@dataclasses.dataclass
class Whole:
    mode: str = fields.setting("a", "A mode.", choices=("a", "b"))
    steps: int = fields.setting(3, "Steps.", lower_bound=1)
    bound: float = fields.setting(math.inf, "A bound.")
    on: bool = fields.setting(False, "A switch.")
    pairs: dict = fields.setting(
        help="k=v pairs.", default_factory=lambda: {"x": 1.0}, kind="str",
        parse=lambda t: {k: float(v) for k, v in
                         (e.split("=") for e in t.split(",") if e)},
        format=lambda d: ",".join("%s=%g" % kv for kv in d.items()))
    part: Part = dataclasses.field(default_factory=Part)
    path: str = None  # set by the program: no flag

    def __post_init__(self):
        if self.steps > 100:
            raise ValueError("--steps: too many")


def _parsed(argv, cls=Whole):
    values = flags.FlagValues()
    fields.define_flags(cls, values)
    values(["prog"] + argv)
    return values


def test_defaults_round_trip_to_the_dataclass_defaults():
    values = _parsed([])
    assert "path" not in values
    assert fields.config_from_flags(Whole, values) == Whole()


def test_flags_set_every_kind_of_field_and_parts():
    values = _parsed(["--mode=b", "--steps=7", "--bound=2.5", "--on",
                      "--pairs=y=2,z=3", "--rate=0.1", "--names=p,q"])
    config = fields.config_from_flags(Whole, values, path="/x")
    assert config == Whole(mode="b", steps=7, bound=2.5, on=True,
                           pairs={"y": 2.0, "z": 3.0},
                           part=Part(rate=0.1, names=("p", "q")), path="/x")


def test_bounds_choices_and_validation_name_the_flag():
    with pytest.raises(flags.IllegalFlagValueError, match="steps"):
        _parsed(["--steps=0"])
    with pytest.raises(flags.IllegalFlagValueError, match="mode"):
        _parsed(["--mode=c"])
    values = _parsed(["--steps=200"])
    with pytest.raises(ValueError, match="--steps"):
        fields.config_from_flags(Whole, values)


def test_a_flag_already_defined_is_shared_not_redefined():
    values = flags.FlagValues()
    flags.DEFINE_integer("steps", 9, "Defined by another group.",
                         flag_values=values)
    fields.define_flags(Whole, values)
    values(["prog"])
    assert fields.config_from_flags(Whole, values).steps == 9


def test_sampler_config_flags_match_the_dataclass():
    values = _parsed(["--sampler=joint", "--joint_weights=noise=2"],
                     sampling_config.SamplerConfig)
    config = fields.config_from_flags(sampling_config.SamplerConfig, values)
    assert config.joint_weights["noise"] == 2.0
    assert config.joint_weights["proximity"] == 0.0
    default = sampling_config.SamplerConfig(sampler="joint")
    assert values["noise_sigma"].value == default.noise_sigma
    assert values["proximity_dt"].value == math.inf
    assert fields.config_from_flags(
        sampling_config.SamplerConfig, _parsed(
            ["--sampler=joint"], sampling_config.SamplerConfig)) == default
    assert "Gaussian-noise" in fields.help_of(sampling_config.SamplerConfig,
                                              "noise_sigma")
