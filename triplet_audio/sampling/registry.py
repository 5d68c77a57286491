"""The sampler registry: one row per `--sampler`, read by every stage.

A row says how the input pipeline feeds the sampler (its stream kind), the
function that turns a batch of stream elements into triplets, and which
`SamplerConfig` fields it takes as keyword arguments:

  stream "pairs"        consecutive windows of one shuffled stream, k pairs
                        per call: fn(pairs, seed, **params) -> triplet dict
                        (window 0 of a pair is the anchor's source, window 1
                        a random other example). noise, translation, mixing.
  stream "proximity"    per-record (window, partner) elements, paired across
                        recordings (`pipeline.record_to_proximity_elements`).
  stream "class_index"  windows drawn by class from the corpus's class index
                        (`class_index`); needs labels.
  stream "mixture"      `joint`: the unsupervised rows mixed per triplet.

Adding a sampler is one row, one function and (if it has a parameter) one
`SamplerConfig` field. For a "pairs" sampler (README, "Adding a sampler"):

    def reverse_sampler(pairs, seed):
        del seed
        return samplers.augmentation_triplets(
            pairs, pairs[samplers.LOGMEL][:, 0, ::-1], "reverse")

    registry.register(registry.Sampler("reverse", "pairs", reverse_sampler))

after which `--sampler=reverse` trains, inspects and joins `joint`.
"""

import dataclasses

from triplet_audio.config import options
from triplet_audio.sampling import samplers

STREAMS = ("pairs", "proximity", "class_index", "mixture")


@dataclasses.dataclass(frozen=True)
class Sampler:
    """One row of the registry.

    Attributes:
      name: the `--sampler` value.
      stream: one of `STREAMS`: how the pipeline feeds `fn`.
      fn: the sampler function (None for "class_index" and "mixture", which
        the pipeline implements).
      params: {fn keyword: SamplerConfig field name}.
      unsupervised: needs no labels (and so is part of `joint`).
      labels: what the loss's labels name: "window" (the source window),
        "recording" or "classes" (multi-hot).
    """
    name: str
    stream: str
    fn: object = None
    params: dict = dataclasses.field(default_factory=dict)
    unsupervised: bool = True
    labels: str = "window"

    def kwargs(self, config):
        """The sampler's keyword arguments from a `SamplerConfig`."""
        return {kw: getattr(config, field) for kw, field in
                self.params.items()}


_REGISTRY = {}


def register(sampler):
    """Adds a sampler row (and its name to `options.SAMPLERS`).

    Args:
      sampler: `Sampler`.

    Returns:
      sampler.

    Raises:
      ValueError: on a name already taken or an unknown stream kind.
    """
    if sampler.name in _REGISTRY:
        raise ValueError("sampler %r is already registered" % sampler.name)
    if sampler.stream not in STREAMS:
        raise ValueError("sampler %r: stream must be one of %s, got %r" % (
            sampler.name, ", ".join(STREAMS), sampler.stream))
    _REGISTRY[sampler.name] = sampler
    options.add_sampler(sampler.name, sampler.unsupervised and
                        sampler.stream != "mixture")
    return sampler


def unregister(name):
    """Removes a sampler added by `register` (tests)."""
    del _REGISTRY[name]
    options.remove_sampler(name)


def get(name):
    """The registry row of `name`.

    Raises:
      ValueError: naming --sampler on an unknown name.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError("--sampler: unknown sampler %r (choose from %s)" % (
            name, ", ".join(_REGISTRY))) from None


def names():
    """Registered sampler names, in registration order."""
    return tuple(_REGISTRY)


for _row in (
        Sampler("noise", "pairs", samplers.noise_sampler,
                {"sigma": "noise_sigma"}),
        Sampler("translation", "pairs", samplers.translation_sampler,
                {"max_shift": "translation_max_shift"}),
        Sampler("mixing", "pairs", samplers.mixing_sampler,
                {"alpha": "mixing_alpha"}),
        Sampler("proximity", "proximity", samplers.proximity_sampler,
                labels="recording"),
        Sampler("supervised", "class_index", unsupervised=False,
                labels="classes"),
        Sampler("joint", "mixture")):
    register(_row)
