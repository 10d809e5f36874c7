"""TopK sparse autoencoder (SAE) of a model's residual stream (issue 14; the method of the companion paper,
``../shared/reference/seed-companion-sae-abstract.txt``, which trained TopK SAEs on every layer of Geneformer and
scGPT; TopK as in Gao et al. 2024, "Scaling and evaluating sparse autoencoders").

For one activation ``x`` ``[d]``:

- encode: ``pre = W_enc (x - b_dec) + b_enc`` ``[F]``; ``z = ReLU(TopK_k(pre))``: every latent but the ``k`` largest
  pre-activations is 0 (ties broken by ``torch.topk``);
- decode: ``x_hat = W_dec z + b_dec``; loss: mean over the batch of ``||x - x_hat||^2 / d`` (mean squared error per
  dimension), reported also as the fraction of variance explained ``1 - SSE / SST``;
- the decoder's columns (each feature's direction) have unit norm, restored after every step, so a feature's
  activation is its size along its direction;
- an intervention edits ``z`` and adds ``W_dec (z' - z)`` to ``x`` itself: the part of ``x`` the SAE does not
  reconstruct (the error term) is kept, so an intervention that changes nothing returns ``x`` exactly.

Why written here rather than taken from SAELens or dictionary-learning: both are built around language models
(SAELens requires TransformerLens, datasets and nltk; dictionary-learning requires nnsight, wandb and circuitsvis),
capture activations through their own model wrappers and train from token datasets; this project captures
activations through its own model-family seam, stores them on disk, and needs only the model below (a few dozen
lines of torch) trained from batches read from disk with a fixed seed, on CPU or GPU.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn


class TopKSAE(nn.Module):
    """``d_in`` -> ``n_features`` TopK SAE (module doc). Parameters: ``W_enc`` ``[F, d]``, ``b_enc`` ``[F]``,
    ``W_dec`` ``[d, F]`` (unit-norm columns), ``b_dec`` ``[d]``."""

    def __init__(self, d_in: int, n_features: int, k: int, *, seed: int = 0):
        super().__init__()
        if not 0 < k <= n_features:
            raise ValueError(f"k must be between 1 and n_features ({n_features}), got {k}")
        self.d_in, self.n_features, self.k = d_in, n_features, k
        generator = torch.Generator().manual_seed(seed)
        w = torch.randn(d_in, n_features, generator=generator)
        w /= w.norm(dim=0, keepdim=True)
        self.W_dec = nn.Parameter(w)
        self.W_enc = nn.Parameter(w.T.clone())      # tied at initialisation (Gao et al.)
        self.b_enc = nn.Parameter(torch.zeros(n_features))
        self.b_dec = nn.Parameter(torch.zeros(d_in))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, F]`` for ``x`` ``[n, d]``."""
        return (x - self.b_dec) @ self.W_enc.T + self.b_enc

    def active(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(``[n, k]`` indices, ``[n, k]`` values): each row's ``k`` largest pre-activations, values after ReLU
        (the sparse form of :meth:`encode`)."""
        top = torch.topk(self.pre_activations(x), self.k, dim=-1)
        return top.indices, torch.relu(top.values)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, F]`` latents: ReLU of the ``k`` largest pre-activations of each row, 0 elsewhere."""
        indices, values = self.active(x)
        return torch.zeros(x.shape[0], self.n_features, dtype=values.dtype, device=values.device).scatter(
            -1, indices, values)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """``[n, d]`` reconstruction of latents ``z`` ``[n, F]``."""
        return z @ self.W_dec.T + self.b_dec

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reconstruction ``[n, d]``, latents ``[n, F]``)."""
        z = self.encode(x)
        return self.decode(z), z

    def intervene(self, x: torch.Tensor, edit: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """``x`` with its latents ``z`` replaced by ``edit(z)`` through the decoder, the error term kept:
        ``x + (edit(z) - z) @ W_dec^T`` (exactly ``x`` when the edit changes nothing)."""
        z = self.encode(x)
        return x + (edit(z) - z) @ self.W_dec.T

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=0, keepdim=True).clamp_min(1e-12)


def save_sae(sae: TopKSAE, path) -> None:
    """Write the weights as plain arrays (``.npz``: ``W_enc``, ``b_enc``, ``W_dec``, ``b_dec``, ``k``)."""
    np.savez(path, **{name: p.detach().cpu().numpy() for name, p in sae.named_parameters()}, k=sae.k)


def load_sae(path) -> TopKSAE:
    """The SAE :func:`save_sae` wrote."""
    with np.load(path) as f:
        d_in, n_features = f["W_dec"].shape
        sae = TopKSAE(d_in, n_features, int(f["k"]))
        with torch.no_grad():
            for name, p in sae.named_parameters():
                p.copy_(torch.from_numpy(f[name]))
    return sae


def reconstruction_loss(x: torch.Tensor, x_hat: torch.Tensor) -> torch.Tensor:
    """Mean over rows and dimensions of ``(x - x_hat)^2``."""
    return ((x - x_hat) ** 2).mean()


@dataclass(frozen=True)
class TrainingReport:
    """Loss per step, and on the data read once more after training: fraction of variance explained, how often each
    feature fired (``[F]``, share of rows), and the features that never fired (dead)."""

    losses: np.ndarray
    fraction_variance_explained: float
    firing_rate: np.ndarray

    @property
    def dead(self) -> np.ndarray:
        return np.nonzero(self.firing_rate == 0)[0]


def train_sae(batches: Callable[[], Iterable[np.ndarray]], d_in: int, *, n_features: int, k: int, epochs: int = 1,
              lr: float = 1e-3, seed: int = 0, device: torch.device | str = "cpu") -> tuple[TopKSAE, TrainingReport]:
    """Train a :class:`TopKSAE` on activations ``[n, d_in]`` read batch by batch: ``batches()`` yields them in a
    fixed order for each pass (from disk: :meth:`analysis.io.activations.ActivationStore.batches`), so memory
    holds one batch. ``b_dec`` starts at the first batch's mean. Adam, ``epochs`` passes, decoder columns
    renormalised after every step; same seed and batches, same model."""
    torch.manual_seed(seed)
    device = torch.device(device)
    sae = TopKSAE(d_in, n_features, k, seed=seed).to(device)
    optimiser = torch.optim.Adam(sae.parameters(), lr=lr)
    losses = []
    for epoch in range(epochs):
        for i, batch in enumerate(batches()):
            x = torch.from_numpy(np.array(batch, dtype=np.float32)).to(device)   # a writable copy of the read
            if epoch == 0 and i == 0:
                with torch.no_grad():
                    sae.b_dec.copy_(x.mean(dim=0))
            loss = reconstruction_loss(x, sae(x)[0])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            sae.normalise_decoder()
            losses.append(loss.item())
    if not losses:
        raise ValueError("no activations to train the SAE on (batches() yielded nothing)")
    return sae, evaluate_sae(sae, batches(), device=device, losses=np.asarray(losses))


@torch.no_grad()
def evaluate_sae(sae: TopKSAE, batches: Iterable[np.ndarray], *, device: torch.device | str = "cpu",
                 losses: np.ndarray | None = None) -> TrainingReport:
    """Fraction of variance explained over every row of ``batches`` (``1 - SSE / SST``, SST about the rows' mean,
    summed over dimensions) and each feature's firing rate, in one pass (sums and sums of squares per dimension)."""
    n, sse = 0, 0.0
    total = total_sq = None
    fired = torch.zeros(sae.n_features, dtype=torch.float64)
    for batch in batches:
        x = torch.from_numpy(np.array(batch, dtype=np.float32)).to(device)
        x_hat, z = sae(x)
        sse += float(((x - x_hat).double() ** 2).sum())
        xd = x.double()
        total = xd.sum(0) if total is None else total + xd.sum(0)
        total_sq = (xd ** 2).sum(0) if total_sq is None else total_sq + (xd ** 2).sum(0)
        fired += (z > 0).sum(0).double().cpu()
        n += x.shape[0]
    if n == 0:
        raise ValueError("no activations to evaluate the SAE on")
    sst = float((total_sq - total ** 2 / n).sum())
    return TrainingReport(np.asarray([] if losses is None else losses), 1.0 - sse / sst if sst > 0 else float("nan"),
                          (fired / n).numpy())
