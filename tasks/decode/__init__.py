"""Video decoding: frame readers (decord, PyAV), time spans, and the codec's motion and residual maps."""
