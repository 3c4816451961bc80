"""Flax (linen) models: one transformer core, the T5 and ELECTRA families, HF interop."""
