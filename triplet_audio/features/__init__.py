"""Stage 1: audio files -> log-mel windows -> sharded TFRecords (decode, front end, record schema, extraction runners)."""
