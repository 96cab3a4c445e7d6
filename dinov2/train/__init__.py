"""DINOv2 training: the meta-architecture, the loop (`main`, `get_args_parser`), schedules and checkpoints."""

from dinov2.train.ssl_meta_arch import SSLMetaArch
from dinov2.train.train import get_args_parser, main

__all__ = ["SSLMetaArch", "get_args_parser", "main"]
