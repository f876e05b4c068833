"""The fully connected head on top of the pooled pyramid: fc6, fc7 and fc8 (K + 1 outputs).

Only these layers are trained (the conv trunk is frozen, so its maps are cached).  The input
is standardised per dimension with statistics measured once on training windows and stored
as buffers, so a checkpoint carries its feature normalisation.  For trunks with pretrained
fc6/fc7 (AlexNet, VGG16) the normalisation is the identity so the pretrained layers see the
features they were trained on.

fc6 may be factorised (``fc6_rank``): two linear layers, ``D -> rank`` without bias then
``rank -> width``, the form ``detector.model.compression`` gives a trained fc6 (truncated SVD).
"""
from __future__ import annotations

import torch
from torch import nn


class SPPHead(nn.Module):
    """Normalise -> fc6 -> ReLU -> dropout -> fc7 -> ReLU -> dropout -> fc8."""

    def __init__(self, in_features: int, width: int, num_classes: int, dropout: float = 0.5,
                 seed: int = 0, fc6_rank: int | None = None):
        super().__init__()
        self.register_buffer("feature_mean", torch.zeros(in_features))
        self.register_buffer("feature_std", torch.ones(in_features))
        self.fc6 = nn.Linear(in_features, width)
        self.fc7 = nn.Linear(width, width)
        self.fc8 = nn.Linear(width, num_classes + 1)
        self.dropout = nn.Dropout(dropout)
        generator = torch.Generator().manual_seed(seed)  # the same seed gives the same head
        for layer in (self.fc6, self.fc7, self.fc8):  # Caffe's gaussian(0.01) init, as the paper
            nn.init.normal_(layer.weight, std=0.01, generator=generator)
            nn.init.zeros_(layer.bias)
        if fc6_rank is not None:
            self.factorise_fc6(fc6_rank)

    @property
    def fc6_rank(self) -> int | None:
        """Rank of a factorised fc6, None for a full one."""
        return self.fc6[0].out_features if isinstance(self.fc6, nn.Sequential) else None

    def factorise_fc6(self, rank: int) -> None:
        """Replace fc6 by ``D -> rank`` (no bias) then ``rank -> width`` layers, to be loaded
        (``detector.model.compression.compress_fc6`` or a compressed model's state dict)."""
        if self.fc6_rank is not None:
            raise ValueError(f"fc6 is already factorised (rank {self.fc6_rank})")
        in_features, width = self.fc6.in_features, self.fc6.out_features
        if not 1 <= rank < min(in_features, width):
            raise ValueError(f"fc6_rank must be in [1, {min(in_features, width) - 1}] for a "
                             f"{width} x {in_features} fc6, got {rank}")
        self.fc6 = nn.Sequential(nn.Linear(in_features, rank, bias=False), nn.Linear(rank, width))

    def set_normalisation(self, sample: torch.Tensor, chunk_rows: int = 1024) -> None:
        """Standardise with the per-dimension mean/std (unbiased) of a sample of pooled features.

        The sample may be float16 (the fine-tuning bank's rows): it is read in float64 chunks of
        ``chunk_rows``, so a 20000 x 16000 sample costs ~130 MB of temporaries instead of a
        1.3 GB float32 copy and its deviations.
        """
        if sample.ndim != 2 or len(sample) < 2:
            raise ValueError(f"normalisation needs an N x D sample with N >= 2, got {tuple(sample.shape)}")
        chunks = range(0, len(sample), chunk_rows)
        total = sum(sample[i:i + chunk_rows].double().sum(dim=0) for i in chunks)
        mean = total / len(sample)
        squares = sum(((sample[i:i + chunk_rows].double() - mean) ** 2).sum(dim=0) for i in chunks)
        std = (squares / (len(sample) - 1)).sqrt()
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp_min(1e-3))

    def load_pretrained_fc(self, weights: dict[str, torch.Tensor]) -> None:
        """Copy pretrained fc6/fc7 (already laid out for the pyramid by the backbone)."""
        if self.fc6_rank is not None:
            raise ValueError("pretrained fc6/fc7 load into a full fc6, not a factorised one")
        for name in ("fc6", "fc7"):
            layer = getattr(self, name)
            weight, bias = weights[f"{name}.weight"], weights[f"{name}.bias"]
            if weight.shape != layer.weight.shape:
                raise ValueError(f"pretrained {name} is {tuple(weight.shape)} but the head needs "
                                 f"{tuple(layer.weight.shape)}: set fc_width={weight.shape[0]}")
            layer.weight.data.copy_(weight)
            layer.bias.data.copy_(bias)

    def features(self, pooled: torch.Tensor) -> torch.Tensor:
        """fc7 activations (after ReLU), the SVMs' input."""
        x = (pooled.float() - self.feature_mean).div_(self.feature_std)  # one temporary, not two
        x = self.dropout(torch.relu(self.fc6(x)))
        return self.dropout(torch.relu(self.fc7(x)))

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """fc8 logits over background (index 0) and the K classes."""
        return self.fc8(self.features(pooled))
