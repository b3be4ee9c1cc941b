"""Task loaders, video decoding and samplers."""
