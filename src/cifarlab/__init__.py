"""cifarlab: the practical PyTorch CIFAR-10 tutorial as a reproducible DVC pipeline."""

__version__ = "0.1.0"
