"""weft: adaptive, topology-aware distributed training of ordinary PyTorch models."""

__version__ = "0.1.0"
