"""Stage 5: SavedModel export, embedding a corpus, and the embeddings files."""
