"""weft: adaptive, topology-aware distributed training of ordinary PyTorch models."""

__version__ = "0.1.0"

__all__ = ["Parallel", "parallelize"]


def __getattr__(name):
    # Lazy: `import weft` stays light (no torch.distributed import until used).
    if name in ("parallelize", "Parallel"):
        from weft.parallel import apply

        return getattr(apply, name)
    raise AttributeError(f"module 'weft' has no attribute {name!r}")
