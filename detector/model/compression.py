"""Truncated-SVD compression of a trained fc6 (Fast R-CNN, Girshick 2015, section 3.1).

At test time an image's windows all go through fc6, a ``width x D`` matrix (1024 x 16000 for the
default trunk: 320 channels x 50 bins).  With ~1100 distinct windows per VOC image (1112 of 1770
on 10 dev_val images at 688) that product is 36 GFLOP, against 9 GFLOP for the trunk's one
conv pass at 688 x 917, and most of the head's time.  Fast R-CNN's answer, for the same
problem: replace ``W`` by its best rank-``r`` approximation ``U_r S_r V_r^T`` (Eckart-Young),
i.e. two layers without a non-linearity between them, the
first ``r x D`` without bias, the second ``width x r`` with fc6's bias.  The cost falls from
``width * D`` to ``r * (width + D)`` multiply-adds per window (3.8x at r = 256 here).

Decisions:
- It compresses a trained model (``tools/compress_net.py``, as py-faster-rcnn's tool of that
  name): the exact fc6 stays the default, since the paper is exact; the compressed model is a
  separate file whose config records ``fc6_rank``, so every tool (test, benchmark, ensemble)
  uses it as any other model.  The SVMs and box regressors are kept: they read fc7 and the
  pooled features, and fc7 moves only by the discarded singular values.
- The SVD is taken of fc6 as it acts on the standardised features (the head normalises its
  input first), where every input dimension has unit variance, so discarding the smallest
  singular values discards the least output energy on typical inputs; computed in float64.
- Only fc6: fc7 (1024 x 1024) costs 16x less than fc6 here.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch

from detector.head.fc import SPPHead
from detector.model.detector import DetectorModel


@dataclass(frozen=True)
class SVDFactors:
    """``weight ~= second @ first``: ``first`` r x D, ``second`` out x r; ``kept_energy`` is the
    share of the squared singular values kept, ``relative_error`` the Frobenius norm of the
    discarded part over that of ``weight``."""

    first: torch.Tensor
    second: torch.Tensor
    kept_energy: float
    relative_error: float


def truncated_svd(weight: torch.Tensor, rank: int) -> SVDFactors:
    """The best rank-``rank`` factorisation of a 2-D weight (float64 SVD, factors in its dtype)."""
    if weight.ndim != 2:
        raise ValueError(f"truncated_svd needs a 2-D weight, got shape {tuple(weight.shape)}")
    full_rank = min(weight.shape)
    if not 1 <= rank < full_rank:
        raise ValueError(f"rank must be in [1, {full_rank - 1}] for a {tuple(weight.shape)} weight "
                         f"(rank {full_rank} or more saves nothing), got {rank}")
    u, s, vh = torch.linalg.svd(weight.detach().double(), full_matrices=False)
    energy = s.square()
    kept = float(energy[:rank].sum() / energy.sum())
    first = (s[:rank, None] * vh[:rank]).to(weight.dtype)
    second = u[:, :rank].to(weight.dtype).contiguous()
    return SVDFactors(first, second, kept, float((1.0 - kept) ** 0.5))


def compress_fc6(head: SPPHead, rank: int) -> tuple[SPPHead, SVDFactors]:
    """A copy of ``head`` whose fc6 is its rank-``rank`` truncated SVD (two linear layers)."""
    if head.fc6_rank is not None:
        raise ValueError(f"fc6 is already compressed (rank {head.fc6_rank})")
    factors = truncated_svd(head.fc6.weight, rank)
    compressed = copy.deepcopy(head)
    compressed.factorise_fc6(rank)
    with torch.no_grad():
        compressed.fc6[0].weight.copy_(factors.first)
        compressed.fc6[1].weight.copy_(factors.second)
        compressed.fc6[1].bias.copy_(head.fc6.bias)
    return compressed, factors


def compress_model(model: DetectorModel, rank: int) -> tuple[DetectorModel, SVDFactors]:
    """The detector with its fc6 compressed to ``rank`` (config ``fc6_rank`` records it)."""
    head, factors = compress_fc6(model.head, rank)
    config = dataclasses.replace(model.config, fc6_rank=rank)
    return dataclasses.replace(model, config=config, head=head), factors
