"""Sampling: the samplers (uniform, codec budget, random, pixel difference), patch selection and the
training views' colour jitter."""
