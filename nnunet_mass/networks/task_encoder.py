"""Task tokens: what each reference mask marks, as a few d-dimensional tokens per encoder stage.

Every mask is encoded on its own (masks are folded into the batch axis), so tasks never
see each other, and every size here comes from the grid of pooled cells, never from the
crop size: tokens of references of any size have one shape and can be averaged.
"""
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

_EPS = 1e-6
_ADAPTIVE_POOLS = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}


def attention_heads(dim: int) -> int:
    """About one head per 32 channels, but always a divisor of `dim`."""
    heads = max(1, dim // 32)
    while dim % heads:
        heads -= 1
    return heads


def adaptive_pool(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Area average of (..., C, *s) to (..., C, *size); any leading axes, any s."""
    lead = x.shape[: x.ndim - len(size)]
    pooled = _ADAPTIVE_POOLS[len(size)](x.reshape(-1, 1, *x.shape[len(lead):]), list(size))
    return pooled.reshape(*lead, *pooled.shape[2:])


def masked_mean(features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Mask-weighted mean feature per mask; an empty mask gives zeros, never NaN.

    features (B, C, *s), masks (B, K, *s) -> (B, K, C)
    """
    weights = masks.flatten(2)  # (B, K, N)
    # normalise the weights first: a sum over a large map could overflow in float16
    weights = weights / (weights.sum(-1, keepdim=True) + _EPS)
    return torch.einsum("bkn,bcn->bkc", weights, features.flatten(2))


def _to_cells(x: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, C, *s) with every s divisible by grid -> (B, grid^ndim, C, voxels per cell)."""
    b, c, *size = x.shape
    x = x.reshape(b, c, *[n for axis in size for n in (grid, axis // grid)])
    cells = [2 + 2 * i for i in range(len(size))]
    return x.permute(0, *cells, 1, *[a + 1 for a in cells]).reshape(b, grid ** len(size), c, -1)


def masked_cell_pool(features: torch.Tensor, masks: torch.Tensor, grid: int) -> torch.Tensor:
    """Area average of features * mask over a grid^ndim grid of cells, per mask.

    features (B, C, *s), masks (B, K, *s) -> (B, K, grid^ndim, C). Where the grid divides
    the map, each cell is a small matmul, so the (B, K, C, *s) product is never built.
    """
    size = features.shape[2:]
    if all(n % grid == 0 for n in size):
        f, m = _to_cells(features, grid), _to_cells(masks, grid)  # (B, P, C, V), (B, P, K, V)
        return (m / f.shape[-1] @ f.transpose(-1, -2)).transpose(1, 2)  # (B, K, P, C)
    product = features.unsqueeze(1) * masks.unsqueeze(2)  # (B, K, C, *s)
    return adaptive_pool(product, [grid] * len(size)).flatten(3).transpose(2, 3)


def mask_aware_cells(features: torch.Tensor, masks: torch.Tensor, grid: int) -> torch.Tensor:
    """Per cell and mask: pooled F*m, F*(1-m) and m, concatenated.

    features (B, C, *s), masks (B, K, *s) -> (B, K, grid^ndim, 2C + 1)
    """
    cells = [grid] * (features.ndim - 2)
    inside = masked_cell_pool(features, masks, grid)  # (B, K, P, C)
    everything = adaptive_pool(features, cells).flatten(2).transpose(1, 2).unsqueeze(1)  # (B, 1, P, C)
    coverage = adaptive_pool(masks, cells).flatten(2).unsqueeze(-1)  # (B, K, P, 1)
    # pooling is linear, so pool(F * (1 - m)) = pool(F) - pool(F * m)
    return torch.cat([inside, everything - inside, coverage], -1)


class StageTaskEncoder(nn.Module):
    """Task tokens of one encoder stage: learned queries plus a foreground token attend to
    mask-aware reference tokens through pre-norm transformer decoder blocks."""

    def __init__(self, channels: int, dim: int, num_learned_tokens: int, token_grid: int, blocks: int):
        super().__init__()
        self.grid = token_grid
        self.learned = nn.Parameter(torch.randn(num_learned_tokens, dim) * 0.02)
        self.foreground = nn.Linear(channels, dim)
        # the blocks normalise their queries but not the memory, so normalise it here
        self.reference = nn.Sequential(nn.Linear(2 * channels + 1, dim), nn.LayerNorm(dim))
        self.blocks = nn.ModuleList(
            nn.TransformerDecoderLayer(dim, attention_heads(dim), 4 * dim, dropout=0.0, batch_first=True,
                                       norm_first=True)
            for _ in range(blocks))
        self.norm = nn.LayerNorm(dim)

    def forward(self, features: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """features (B, C, *s), masks (B, K, *S) in [0, 1] -> tokens (B, K, T, d), T = learned + 1."""
        b, k = masks.shape[:2]
        masks = adaptive_pool(masks, features.shape[2:])  # (B, K, *s)
        foreground = self.foreground(masked_mean(features, masks))  # (B, K, d)
        memory = self.reference(mask_aware_cells(features, masks, self.grid)).flatten(0, 1)  # (B*K, P, d)
        tokens = torch.cat([self.learned.expand(b * k, -1, -1), foreground.reshape(b * k, 1, -1)], 1)
        for block in self.blocks:
            tokens = block(tokens, memory)  # (B*K, T, d)
        return self.norm(tokens).reshape(b, k, *tokens.shape[1:])


class TaskEncoder(nn.Module):
    """Task tokens at several encoder stages, each stage with its own projections and blocks."""

    def __init__(self, stage_channels: Sequence[int], dim: int, num_learned_tokens: int = 10,
                 token_grid: int = 4, blocks: int = 2):
        super().__init__()
        self.stages = nn.ModuleList(StageTaskEncoder(c, dim, num_learned_tokens, token_grid, blocks)
                                    for c in stage_channels)

    def forward(self, stage_features: Sequence[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
        """One (B, C_s, *s) map per stage, masks (B, K, *S) -> tokens (B, K, stages, T, d)."""
        return torch.stack([encode(f, masks) for encode, f in zip(self.stages, stage_features)], 2)
