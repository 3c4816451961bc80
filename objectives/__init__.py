"""Pretraining objectives: T5 denoising (host-side) and ELECTRA replaced token detection (device-side), losses."""
