"""Stage 4: the training loop, checkpoints and the run directory."""
