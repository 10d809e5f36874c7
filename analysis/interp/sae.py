"""TopK sparse autoencoder (SAE) of a model's residual stream (the method of the companion paper,
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
    """Loss per step, and from the data read once more after training: fraction of variance explained, how often
    each feature fired (``[F]``, share of rows), the features that never fired (dead), the activations' covariance
    ``[d, d]`` (float64), and the latents at every row in their sparse form (``indices`` int32 and ``values``
    float32, ``[rows, k]``, in the order read)."""

    losses: np.ndarray
    fraction_variance_explained: float
    firing_rate: np.ndarray
    covariance: np.ndarray
    indices: np.ndarray
    values: np.ndarray

    @property
    def dead(self) -> np.ndarray:
        return np.nonzero(self.firing_rate == 0)[0]


def train_sae(batches: Callable[[], Iterable[np.ndarray]], d_in: int, *, n_features: int, k: int, epochs: int = 1,
              lr: float = 1e-3, seed: int = 0, device: torch.device | str = "cpu",
              evaluation: Iterable[np.ndarray] | None = None) -> tuple[TopKSAE, TrainingReport]:
    """Train a :class:`TopKSAE` on activations ``[n, d_in]`` read batch by batch: ``batches()`` yields them in a
    fixed order for each pass (from disk: :meth:`analysis.io.activations.ActivationStore.batches`), so memory
    holds one batch. ``b_dec`` starts at the first batch's mean. Adam, ``epochs`` passes, decoder columns
    renormalised after every step; same seed and batches, same model. The report is :func:`evaluate_sae` over
    ``evaluation`` (default one more ``batches()``): pass the rows in their stored order to get the latents in it."""
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
    return sae, evaluate_sae(sae, batches() if evaluation is None else evaluation, device=device,
                             losses=np.asarray(losses))


@torch.no_grad()
def evaluate_sae(sae: TopKSAE, batches: Iterable[np.ndarray], *, device: torch.device | str = "cpu",
                 losses: np.ndarray | None = None) -> TrainingReport:
    """Everything :class:`TrainingReport` holds beyond the losses, in one pass over ``batches``: fraction of variance
    explained (``1 - SSE / SST``, SST about the rows' mean, summed over dimensions, i.e. the covariance's trace
    times the rows), firing rates, covariance (sums and the sum of outer products, float64) and sparse latents."""
    n, sse = 0, 0.0
    total = torch.zeros(sae.d_in, dtype=torch.float64)
    outer = torch.zeros(sae.d_in, sae.d_in, dtype=torch.float64)
    fired = torch.zeros(sae.n_features, dtype=torch.float64)
    indices, values = [], []
    for batch in batches:
        x = torch.from_numpy(np.array(batch, dtype=np.float32)).to(device)
        active, value = sae.active(x)
        x_hat = sae.decode(torch.zeros(x.shape[0], sae.n_features, device=x.device).scatter(-1, active, value))
        sse += float(((x - x_hat).double() ** 2).sum())
        xd = x.double().cpu()
        total += xd.sum(0)
        outer += xd.T @ xd
        fired.index_add_(0, active[value > 0].cpu(), torch.ones(int((value > 0).sum()), dtype=torch.float64))
        indices.append(active.cpu().numpy().astype(np.int32))
        values.append(value.cpu().numpy().astype(np.float32))
        n += x.shape[0]
    if n == 0:
        raise ValueError("no activations to evaluate the SAE on")
    mean = (total / n).numpy()
    cov = outer.numpy() / n - np.outer(mean, mean)
    sst = float(np.trace(cov)) * n
    return TrainingReport(np.asarray([] if losses is None else losses), 1.0 - sse / sst if sst > 0 else float("nan"),
                          (fired / n).numpy(), cov, np.concatenate(indices), np.concatenate(values))
