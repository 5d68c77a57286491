"""triplet-audio: semantic audio embeddings learned from unlabeled audio.

Implements Jansen et al., "Unsupervised learning of semantic audio
representations" (triplet sampling on log-mel windows, ResNet embedding,
semi-hard triplet loss), as a pipeline of importable stages:
audio_io -> frontend -> records -> samplers/pipeline -> models/losses ->
training -> export -> embed -> evaluation.
"""

__version__ = "0.1.0"
