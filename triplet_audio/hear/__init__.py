"""The HEAR 2021 common API: `hear-validator triplet_audio.hear -m EXPORT_DIR`.

See `triplet_audio.hear.api` (and the README's "Use an export") for what the
functions return; this package is the module HEAR's tools are given.
"""

from triplet_audio.hear.api import get_scene_embeddings
from triplet_audio.hear.api import get_timestamp_embeddings
from triplet_audio.hear.api import HearModel
from triplet_audio.hear.api import load_model

__all__ = ["load_model", "get_scene_embeddings", "get_timestamp_embeddings",
           "HearModel"]
