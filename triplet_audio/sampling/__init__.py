"""Stage 2: record shards -> triplet batches (sampler maths, the sampler registry, the tf.data pipeline, remote pipelines)."""
