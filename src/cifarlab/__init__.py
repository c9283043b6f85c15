"""cifarlab: the practical PyTorch CIFAR-10 tutorial as a reproducible DVC pipeline."""
