"""OneVision-Encoder, implemented in full: `from backbones.onevision import OneVisionEncoder`."""

from backbones.onevision.config import OneVisionConfig, OneVisionConfigError
from backbones.onevision.model import OneVisionEncoder, OneVisionOutput

__all__ = ["OneVisionConfig", "OneVisionConfigError", "OneVisionEncoder", "OneVisionOutput"]

from backbones.onevision import backbone as _registry_entries  # noqa: E402,F401  (registers the sizes)
