"""Input pipeline: the built-in story corpus, tokenizers, token shards and batches."""
