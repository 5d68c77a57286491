"""Stage 7: the synthetic corpus and the end-to-end demo runner."""
