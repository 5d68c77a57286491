"""Stage 0, no TensorFlow: option lists, config dataclasses and their flags, run configs on disk."""
