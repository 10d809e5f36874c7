"""Geneformer (Theodoris et al. 2023): HF ``BertForMaskedLM`` checkpoints, rank-value tokenisation, masked-gene
pretraining of the embedded tiny model."""
from .adapter import Adapter
from .pretrain import train_tiny

__all__ = ["Adapter", "train_tiny"]
