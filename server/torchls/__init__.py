"""torchls: a language server that makes PyTorch code tell the truth about itself."""

__version__ = "0.1.0"
