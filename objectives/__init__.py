"""Pretraining objectives.

T5 denoising runs host-side on token ids; ELECTRA's replaced token detection runs on device.
Losses are shared.
"""
