"""Device choice for tools and evaluations (library code receives the device from its caller)."""

import torch


def default_device() -> torch.device:
    """`cuda` when a GPU is available, else `cpu`."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
