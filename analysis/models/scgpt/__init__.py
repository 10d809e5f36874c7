"""scGPT (Cui et al. 2024), whole-human architecture implemented natively from ``shared/design/scgpt.md``: strict
loading of the release layout, binned-value tokenisation, masked-value pretraining of the embedded tiny model."""
from .adapter import Adapter
from .pretrain import train_tiny

__all__ = ["Adapter", "train_tiny"]
