"""Probe training: attentive heads, the stacked grid, the trainer, evaluation and kept probes."""
