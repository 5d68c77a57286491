"""Stage 3: the embedding networks and the semi-hard triplet loss."""
