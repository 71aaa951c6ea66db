"""ML-GCN (Chen et al., "Multi-Label Image Recognition with Graph Convolutional Networks", CVPR 2019).

The classifier is not a learned matrix but the output of a two-layer graph convolution over the
label graph: from label embeddings ``E`` (C, E_dim) and the normalised correlation matrix ``Â``
(C, C), ``W = Â · LeakyReLU(Â · E · W1) · W2`` (C, D), and the logits of image features ``x``
(B, D) are ``x · Wᵀ`` (the paper's ŷ = W x, no bias).

The correlation matrix follows the paper's Sec. 3.4 (:func:`correlation_matrix`, the reference):

1. ``P[i, j] = P(L_j | L_i)`` on the training labels (:attr:`dbloss.stats.LabelStats.conditional_prob`);
2. binarised at ``tau``: ``A[i, j] = 1`` where ``P[i, j] >= tau`` (the paper's 0.4);
3. re-weighted with ``p``: ``A'[i, j] = p / sum_{j' != i} A[i, j'] * A[i, j]`` off the diagonal,
   ``A'[i, i] = 1 - p`` (the paper's 0.2);
4. normalised as in Kipf & Welling: ``Â = D^-1/2 A' D^-1/2`` with ``D = diag(sum_j A'[i, j])``.

Deviations, each deliberate:

* Label embeddings come from a ``.npy`` file the user gives (C x E_dim; the paper's 300-d GloVe
  vectors, which cannot be downloaded here). Without one the default is one-hot (``E = I``):
  download-free and exactly what a user without word vectors gets, but it carries no semantic
  prior, so the graph and the learned ``W1`` do all the work (with ``Â = I`` this head is a
  linear classifier whose weight is factorised as ``LeakyReLU(W1) · W2``).
* The official release's ``gen_A`` differs from the paper (p = 0.25, sums over the other axis,
  a diagonal of 1 and a transposed normalisation ``D^-1/2 Aᵀ D^-1/2``); we follow the paper.
* A class with no neighbour above ``tau`` keeps only its diagonal ``1 - p``; after normalisation
  that entry is 1 (the class sees only itself), as the paper's formula gives.
* The GCN's output replaces the last linear layer of this project's model (after the neck), so
  the image features are the neck's output, not ResNet-101's max-pooled 2048-d features.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from dbloss.errors import UsageError
from dbloss.methods.base import Method

if TYPE_CHECKING:
    from dbloss.config import TrainConfig
    from dbloss.stats import LabelStats

__all__ = ["GCNClassifier", "MLGCN", "MLGCNOptions", "correlation_matrix", "gcn_head", "load_label_embeddings",
           "one_hot_embeddings"]


def correlation_matrix(cond_prob: np.ndarray | torch.Tensor, tau: float = 0.4, p: float = 0.2) -> torch.Tensor:
    """ML-GCN's normalised correlation matrix ``Â`` (C, C) from conditional probabilities (C, C).

    Args:
        cond_prob: (C, C) ``P[i, j] = P(label j | label i)`` (the diagonal is ignored).
        tau: binarisation threshold, ``A[i, j] = 1`` where ``P[i, j] >= tau``. Default 0.4.
        p: weight of the neighbours: each row's off-diagonal ones share ``p``, the diagonal is
            ``1 - p``. Default 0.2.

    Returns:
        (C, C) float64 tensor ``D^-1/2 A' D^-1/2`` (see the module docstring for ``A'``).

    >>> a = correlation_matrix(np.array([[1.0, 0.5], [0.1, 1.0]]), tau=0.4, p=0.2)
    >>> [[round(v, 4) for v in row] for row in a.tolist()]
    [[0.8, 0.2236], [0.0, 1.0]]
    """
    if not 0.0 <= tau <= 1.0:
        raise ValueError(f"Expected `tau` in [0, 1], but got {tau!r}")
    if not 0.0 <= p < 1.0:
        raise ValueError(f"Expected `p` in [0, 1), but got {p!r}")
    prob = torch.as_tensor(cond_prob, dtype=torch.float64)
    if prob.ndim != 2 or prob.shape[0] != prob.shape[1]:
        raise ValueError(f"Expected `cond_prob` of shape (C, C), but got {tuple(prob.shape)}")
    c = prob.shape[0]
    eye = torch.eye(c, dtype=torch.bool)
    adj = ((prob >= tau) & ~eye).double()  # binarised, neighbours only
    neighbours = adj.sum(1, keepdim=True)
    reweighted = torch.where(neighbours > 0, p * adj / neighbours.clamp(min=1), torch.zeros_like(adj))
    reweighted = reweighted + (1 - p) * torch.eye(c, dtype=torch.float64)
    d = reweighted.sum(1).pow(-0.5)
    return d[:, None] * reweighted * d[None, :]


def one_hot_embeddings(num_classes: int) -> np.ndarray:
    """The download-free default label embeddings: ``I`` (C, C), float32."""
    return np.eye(num_classes, dtype=np.float32)


def load_label_embeddings(path: str | Path, num_classes: int) -> np.ndarray:
    """Label embeddings (C, E_dim) float32 from a ``.npy`` file (read as data: no pickles).

    Row k is the embedding of class k in the dataset's class order (e.g. the GloVe vector of its name).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"label_embeddings: no file {path}")
    try:
        emb = np.load(path, allow_pickle=False)
    except ValueError as e:
        raise ValueError(f"label_embeddings: {path} is not a plain .npy array ({e})") from None
    if emb.ndim != 2 or emb.shape[0] != num_classes:
        raise ValueError(f"label_embeddings: expected an array of shape ({num_classes}, E) (one row per class), "
                         f"but {path} has shape {emb.shape}")
    if not np.issubdtype(emb.dtype, np.number) or not np.isfinite(emb).all():
        raise ValueError(f"label_embeddings: expected finite numbers in {path}, but got dtype {emb.dtype} "
                         f"or non-finite values")
    return emb.astype(np.float32)


class GCNClassifier(nn.Module):
    """ML-GCN's classifier: (B, D) features -> (B, C) logits ``x · GCN(E, Â)ᵀ``.

    Args:
        in_features: D, the image feature dimension (the GCN's output width).
        embeddings: (C, E_dim) label embeddings (a buffer: saved with the model, moved by ``.to``).
        adjacency: (C, C) normalised correlation matrix :func:`correlation_matrix` (a buffer).
        hidden: width of the first graph convolution (the paper's 1024).
        negative_slope: of the LeakyReLU between the two layers (the paper's 0.2).

    >>> head = GCNClassifier(8, np.eye(3), np.eye(3), hidden=4)
    >>> head(torch.randn(2, 8)).shape, head.weight().shape
    (torch.Size([2, 3]), torch.Size([3, 8]))
    """

    def __init__(self, in_features: int, embeddings: np.ndarray | torch.Tensor, adjacency: np.ndarray | torch.Tensor,
                 hidden: int = 1024, negative_slope: float = 0.2) -> None:
        super().__init__()
        emb = torch.as_tensor(embeddings, dtype=torch.float32)
        adj = torch.as_tensor(adjacency, dtype=torch.float32)
        if emb.ndim != 2 or adj.shape != (emb.shape[0], emb.shape[0]):
            raise ValueError(f"Expected embeddings (C, E) and adjacency (C, C), but got {tuple(emb.shape)} and "
                             f"{tuple(adj.shape)}")
        if hidden < 1:
            raise ValueError(f"Expected `hidden` >= 1, but got {hidden!r}")
        self.in_features = in_features
        self.out_features = emb.shape[0]
        self.register_buffer("embeddings", emb.clone())
        self.register_buffer("adjacency", adj.clone())
        # the graph convolutions' weights, (in, out) as in the paper's H W; no bias, as the release's
        self.gc1 = nn.Parameter(torch.empty(emb.shape[1], hidden))
        self.gc2 = nn.Parameter(torch.empty(hidden, in_features))
        self.act = nn.LeakyReLU(negative_slope)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The release's ``GraphConvolution`` initialisation: U(-1/sqrt(out), 1/sqrt(out))."""
        for w in (self.gc1, self.gc2):
            bound = 1.0 / w.shape[1] ** 0.5
            nn.init.uniform_(w, -bound, bound)

    def weight(self) -> torch.Tensor:
        """The classifier the graph produces, ``Â · LeakyReLU(Â · E · W1) · W2``: (C, D)."""
        h = self.act(self.adjacency @ (self.embeddings @ self.gc1))
        return self.adjacency @ (h @ self.gc2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight().to(x.dtype).t()


def gcn_head(in_features: int, cond_prob: np.ndarray, *, embeddings: str | None = None, tau: float = 0.4,
             p: float = 0.2, hidden: int = 1024) -> GCNClassifier:
    """The ML-GCN classifier of a recipe: the graph from the training labels' conditional
    probabilities, embeddings from ``embeddings`` (a ``.npy`` path) or one-hot."""
    c = cond_prob.shape[0]
    emb = one_hot_embeddings(c) if embeddings is None else load_label_embeddings(embeddings, c)
    return GCNClassifier(in_features, emb, correlation_matrix(cond_prob, tau, p), hidden=hidden)


@dataclass
class MLGCNOptions:
    """``method: {name: ml-gcn, ...}``: the label graph and the GCN's width."""

    label_embeddings: str | None = None  # a .npy file (C x E, class order), e.g. GloVe; null: one-hot
    tau: float = 0.4  # P(j | i) >= tau is an edge (the paper's 0.4)
    p: float = 0.2  # the neighbours' share of each row (the paper's 0.2)
    hidden: int = 1024  # width of the first graph convolution (the paper's 1024)

    def validate(self) -> None:
        if not 0.0 <= self.tau <= 1.0:
            raise ValueError(f"Expected 0 <= `method.tau` <= 1, but got {self.tau!r}")
        if not 0.0 <= self.p < 1.0:
            raise ValueError(f"Expected 0 <= `method.p` < 1, but got {self.p!r}")
        if self.hidden < 1:
            raise ValueError(f"Expected `method.hidden` >= 1, but got {self.hidden!r}")


class MLGCN(Method):
    """ML-GCN: the classifier produced by a two-layer GCN over the training labels' co-occurrence graph."""

    name = "ml-gcn"
    Options = MLGCNOptions

    def set_classifier(self, model: nn.Module, cfg: "TrainConfig", stats: "LabelStats | None") -> None:
        if stats is None:
            raise UsageError("method ml-gcn builds its graph from the training labels' statistics; none were given")
        o = self.options
        model.classifier = gcn_head(model.classifier.in_features, stats.conditional_prob,
                                    embeddings=o.label_embeddings, tau=o.tau, p=o.p, hidden=o.hidden)
