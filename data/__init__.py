"""Data: vocabularies, sources, seqio tasks and the sharded input pipeline."""
