"""Where the two views of a pretext sample come from: an anchor, a pre-crop, two windows.

A box is an int64 array (D, 2) of [lo, hi) voxel bounds per spatial axis (z, y, x), the
same [[lo, hi], ...] layout nnU-Net's `crop_and_pad_nd` and the mask store take. Boxes may
reach past the volume: whatever lies outside is padding.

MASS (DESIGN 1.2): an anchor voxel uniform in the volume; a pre-crop of
P = floor((2 - min_overlap) * w) voxels per axis around it; two windows of the patch size w
inside the pre-crop that both contain the anchor. Two length-w intervals inside a length-P
interval share at least 2w - P >= min_overlap * w voxels, so the overlap holds on every axis
by construction. Pure functions; randomness only from the `rng` passed in.
"""
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class ViewPair:
    anchor: np.ndarray     # int64 (D,), a voxel of the volume
    precrop: np.ndarray    # box (D, 2)
    reference: np.ndarray  # box (D, 2), patch-sized
    query: np.ndarray      # box (D, 2), patch-sized


def precrop_size(patch_size: Sequence[int], min_overlap: float) -> np.ndarray:
    """P = floor((2 - min_overlap) * w) per axis, never below w."""
    patch = np.asarray(patch_size, dtype=np.int64)
    if not 0 < min_overlap <= 1:
        raise ValueError(f"min_overlap must lie in (0, 1], got {min_overlap}")
    # flooring only shrinks P, which only raises the overlap
    return np.maximum(np.floor((2 - min_overlap) * patch).astype(np.int64), patch)


def draw_anchor(shape: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """A voxel drawn uniformly from a volume of `shape` (z, y, x)."""
    return rng.integers(0, np.asarray(shape, dtype=np.int64))


def centred_box(anchor: np.ndarray, size: np.ndarray) -> np.ndarray:
    """The box of `size` whose centre voxel (size // 2 from its low end) is `anchor`."""
    lo = np.asarray(anchor, dtype=np.int64) - np.asarray(size, dtype=np.int64) // 2
    return np.stack([lo, lo + size], axis=1)


def draw_window(anchor: np.ndarray, precrop: np.ndarray, patch_size: Sequence[int],
                rng: np.random.Generator) -> np.ndarray:
    """A patch-sized box inside `precrop` that contains `anchor`, uniform over such boxes."""
    patch = np.asarray(patch_size, dtype=np.int64)
    lowest = np.maximum(precrop[:, 0], anchor - patch + 1)   # still reaches the anchor
    highest = np.minimum(precrop[:, 1] - patch, anchor)      # still inside the pre-crop
    if np.any(highest < lowest):
        raise ValueError(f"no window of {patch.tolist()} holds anchor {anchor.tolist()} inside pre-crop "
                         f"{precrop.tolist()}")
    lo = rng.integers(lowest, highest + 1)
    return np.stack([lo, lo + patch], axis=1)


def draw_view_pair(shape: Sequence[int], patch_size: Sequence[int], min_overlap: float,
                   rng: np.random.Generator) -> ViewPair:
    """Anchor, pre-crop and the reference and query windows of one sample (see module docstring)."""
    if len(shape) != len(patch_size):
        raise ValueError(f"volume shape {tuple(shape)} and patch size {tuple(patch_size)} differ in length")
    anchor = draw_anchor(shape, rng)
    precrop = centred_box(anchor, precrop_size(patch_size, min_overlap))
    return ViewPair(anchor, precrop, draw_window(anchor, precrop, patch_size, rng),
                    draw_window(anchor, precrop, patch_size, rng))


def overlap_fraction(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per axis, the shared length of boxes a and b over a's length (float (D,))."""
    shared = np.minimum(a[:, 1], b[:, 1]) - np.maximum(a[:, 0], b[:, 0])
    return np.maximum(shared, 0) / (a[:, 1] - a[:, 0])


def grow(box: np.ndarray, margin: Sequence[int]) -> np.ndarray:
    """`box` widened by `margin` voxels on both sides of each axis."""
    margin = np.asarray(margin, dtype=np.int64)
    return np.stack([box[:, 0] - margin, box[:, 1] + margin], axis=1)


def hull(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The smallest box holding boxes a and b."""
    return np.stack([np.minimum(a[:, 0], b[:, 0]), np.maximum(a[:, 1], b[:, 1])], axis=1)


def slices_within(box: np.ndarray, outer: np.ndarray) -> tuple[slice, ...]:
    """Slices that cut `box` out of an array holding exactly `outer` (box inside outer)."""
    if np.any(box[:, 0] < outer[:, 0]) or np.any(box[:, 1] > outer[:, 1]):
        raise ValueError(f"box {box.tolist()} is not inside {outer.tolist()}")
    return tuple(slice(int(lo), int(hi)) for lo, hi in box - outer[:, :1])


def intersection_volume(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Voxels shared by `box` (D, 2) and each of `boxes` (N, D, 2): int64 (N,)."""
    lo = np.maximum(boxes[:, :, 0], box[None, :, 0])
    hi = np.minimum(boxes[:, :, 1], box[None, :, 1])
    return np.prod(np.clip(hi - lo, 0, None), axis=1)
