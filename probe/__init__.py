"""The attentive probe, the run and its results."""
