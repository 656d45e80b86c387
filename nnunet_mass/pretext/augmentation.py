"""The weak (reference) and strong (query) view augmentations, as batchgeneratorsv2 transforms.

Each view is read as a region larger than its window (`view_margin`) and goes through one
`ComposeTransforms` on {'image': float32 (C, *region), 'segmentation': int32 (m, *region)},
the n drawn masks bit-packed into m = ceil(n / 24) channels (`pack_masks`, see `augment_view`),
so spatial transforms move masks with the image:

1. `AffineOrCrop`: with probability `spatial_p` bgv2's `SpatialTransform` (per-axis scale,
   rotation about every axis, image linear, masks nearest-neighbour so they stay 0/1, both
   zero outside the region) centred on the region; otherwise a plain centre crop, which is
   exactly the window. Either way the output is the patch size. No shear (bgv2's
   SpatialTransform has none), no elastic deformation, no mirroring.
2. Intensity, each behind `RandomTransform(p=intensity_p)`, image only: multiplicative
   brightness, additive brightness N(0, std), gamma, contrast, Gaussian blur, Gaussian noise.

The margin follows the idea of nnU-Net's initial patch size (the patch box rotated in each
plane in turn by the largest angle, here for the whole box rather than one corner), scaled by
the largest zoom-out: 62 voxels a side for a 128^3 patch. Corners of a patch rotated about
several axes at once near the extremes can still sample past the region: they read as zero
(image) and no mask, like samples past the volume. The exact worst case (314^3 instead of
252^3 at 128^3) would read about twice the voxels per view for those few corners.

Patches that nnU-Net would treat as anisotropic (max/min extent > 3) rotate in-plane only
(about z), as nnU-Net's dummy-2D augmentation does; 2D patches (y, x) rotate in-plane.
Randomness comes from numpy's and torch's global generators, as in every bgv2 transform; the
loader seeds both per sample from its own generator.
"""
import math
from typing import Sequence

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform
from batchgeneratorsv2.transforms.intensity.brightness import (BrightnessAdditiveTransform,
                                                               MultiplicativeBrightnessTransform)
from batchgeneratorsv2.transforms.intensity.contrast import ContrastTransform
from batchgeneratorsv2.transforms.intensity.gamma import GammaTransform
from batchgeneratorsv2.transforms.intensity.gaussian_noise import GaussianNoiseTransform
from batchgeneratorsv2.transforms.noise.gaussian_blur import GaussianBlurTransform
from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform
from batchgeneratorsv2.transforms.utils.compose import ComposeTransforms
from batchgeneratorsv2.transforms.utils.random import RandomTransform

from nnunet_mass.masks.stack import MaskInfo
from nnunet_mass.pretext.settings import STRONG, WEAK, AugmentationStrength

__all__ = ["AugmentationStrength", "WEAK", "STRONG", "AffineOrCrop", "InPlaneRotation", "build_view_transforms",
           "view_margin", "is_anisotropic", "augment_view", "pack_masks",
           "pack_layer_masks", "unpack_masks"]

ANISOTROPY_THRESHOLD = 3.0  # as nnU-Net's ANISO_THRESHOLD
PACKED_BITS = 24  # masks per packed segmentation channel (see pack_masks)


def is_anisotropic(patch_size: Sequence[int]) -> bool:
    """A 3D patch whose largest extent exceeds the z extent by more than the threshold."""
    return len(patch_size) == 3 and max(patch_size) / patch_size[0] > ANISOTROPY_THRESHOLD


def rotation_planes(patch_size: Sequence[int]) -> list[tuple[int, int]]:
    """The axis pairs the spatial augmentation rotates in: (y, x) only for 2D and anisotropic
    patches, all three planes otherwise."""
    if len(patch_size) == 2 or is_anisotropic(patch_size):
        return [(len(patch_size) - 2, len(patch_size) - 1)]
    return [(1, 2), (0, 2), (0, 1)]


def view_margin(patch_size: Sequence[int], strength: AugmentationStrength) -> np.ndarray:
    """Voxels to read beyond the window on each side of each axis (int64 (D,)) so the
    spatial augmentation finds image to sample (see module docstring)."""
    patch = np.asarray(patch_size, dtype=np.float64)
    if strength.spatial_p == 0:
        return np.zeros(len(patch), dtype=np.int64)
    cos, sin = math.cos(math.radians(strength.rotation_deg)), math.sin(math.radians(strength.rotation_deg))
    extent = patch.copy()
    for a, b in rotation_planes(patch_size):  # one plane at a time, as nnU-Net's get_patch_size
        extent[a] = max(extent[a], patch[a] * cos + patch[b] * sin)
        extent[b] = max(extent[b], patch[b] * cos + patch[a] * sin)
    extent *= strength.scale[1]  # scale > 1 spreads the samples: the largest zoom-out reaches furthest
    return np.maximum(np.ceil((extent - patch) / 2), 0).astype(np.int64)


class InPlaneRotation:
    """bgv2 rotation callable: an angle about the first axis (the (y, x) plane), none about the others."""

    def __init__(self, max_radians: float):
        self.max_radians = max_radians

    def __call__(self, image=None, dim: int | None = None, **_) -> float:
        return float(np.random.uniform(-self.max_radians, self.max_radians)) if dim == 0 else 0.0


class AffineOrCrop(BasicTransform):
    """With probability p the affine SpatialTransform, otherwise the plain centre crop."""

    def __init__(self, affine: SpatialTransform, crop: SpatialTransform, p: float):
        super().__init__()
        self.affine, self.crop, self.p = affine, crop, p

    def get_parameters(self, **data_dict) -> dict:
        return {"do_affine": np.random.uniform() < self.p}

    def apply(self, data_dict: dict, **params) -> dict:
        return (self.affine if params["do_affine"] else self.crop)(**data_dict)


def spatial_transform(patch_size: Sequence[int], strength: AugmentationStrength) -> AffineOrCrop:
    """Region -> patch: the affine branch with probability `spatial_p`, else the centre crop."""
    patch = tuple(int(p) for p in patch_size)
    angle = math.radians(strength.rotation_deg)
    rotation = InPlaneRotation(angle) if is_anisotropic(patch) else (-angle, angle)
    common = dict(patch_center_dist_from_border=0, random_crop=False, p_elastic_deform=0,
                  mode_seg="nearest", border_mode_seg="zeros", mode_image="bilinear", padding_mode_image="zeros")
    affine = SpatialTransform(patch, p_rotation=1, rotation=rotation, p_rot_per_axis=1, p_scaling=1,
                              scaling=tuple(strength.scale), p_synchronize_scaling_across_axes=0, **common)
    crop = SpatialTransform(patch, p_rotation=0, p_scaling=0, **common)  # no grid: crops, never resamples
    return AffineOrCrop(affine, crop, strength.spatial_p)


def intensity_transforms(strength: AugmentationStrength) -> list:
    """The six intensity transforms, each applied with probability `intensity_p`."""
    transforms = [
        MultiplicativeBrightnessTransform(tuple(strength.multiplicative_brightness), synchronize_channels=False),
        # synchronize_channels=False draws N(mu, sigma); bgv2 0.3.x's synchronised branch draws U(mu, sigma)
        BrightnessAdditiveTransform(0.0, strength.additive_brightness_std, synchronize_channels=False),
        GammaTransform(tuple(strength.gamma), p_invert_image=0, synchronize_channels=False, p_per_channel=1,
                       p_retain_stats=1),
        ContrastTransform(tuple(strength.contrast), preserve_range=True, synchronize_channels=False),
        GaussianBlurTransform(tuple(strength.blur_sigma), synchronize_channels=False, synchronize_axes=False),
        # bgv2 calls it a variance but uses it as the standard deviation of the noise
        GaussianNoiseTransform(tuple(strength.noise_std), p_per_channel=1, synchronize_channels=True),
    ]
    return [RandomTransform(t, apply_probability=strength.intensity_p) for t in transforms]


def build_view_transforms(patch_size: Sequence[int], strength: AugmentationStrength) -> ComposeTransforms:
    """The ComposeTransforms of one view: region -> patch-sized, augmented view.

    patch_size: the window as the transforms see it, (z, y, x) or (y, x) for 2D configurations.
    """
    return ComposeTransforms([spatial_transform(patch_size, strength), *intensity_transforms(strength)])


def pack_masks(masks: np.ndarray) -> np.ndarray:
    """bool (n, *shape) -> int32 (ceil(n / 24), *shape): mask k is bit k % 24 of channel k // 24.

    24 bits because grid_sample works in float32, which holds integers below 2^24 exactly.
    """
    masks = np.asarray(masks, dtype=bool)
    packed = np.zeros((packed_channels(len(masks)), *masks.shape[1:]), dtype=np.int32)
    for k, mask in enumerate(masks):
        channel, bit = divmod(k, PACKED_BITS)
        np.bitwise_or(packed[channel], 1 << bit, out=packed[channel], where=mask)
    return packed


def pack_layer_masks(layers: np.ndarray, infos: Sequence[MaskInfo], origin: np.ndarray) -> np.ndarray:
    """`pack_masks` of the masks `infos` straight from a crop of their label layers.

    layers: uint16 (L', *shape), a crop of the box `origin` (D, 2); infos[k].layer indexes
    `layers`. Where a mask knows its bounding box only that part of the crop is visited
    (most masks are far smaller than a view).
    """
    packed = np.zeros((packed_channels(len(infos)), *layers.shape[1:]), dtype=np.int32)
    for k, info in enumerate(infos):
        channel, bit = divmod(k, PACKED_BITS)
        box = _box_in_crop(info.bbox, origin)
        if box is None:
            continue  # the mask lies outside the crop
        target = packed[(channel, *box)]  # a view
        np.bitwise_or(target, 1 << bit, out=target, where=layers[(info.layer, *box)] == info.label)
    return packed


def _box_in_crop(bbox, origin: np.ndarray) -> tuple[slice, ...] | None:
    """Slices of the crop `origin` covering `bbox` (all of it without a bbox); None if disjoint."""
    if bbox is None:
        return tuple(slice(None) for _ in origin)
    lo = np.maximum(np.asarray(bbox)[:, 0], origin[:, 0]) - origin[:, 0]
    hi = np.minimum(np.asarray(bbox)[:, 1], origin[:, 1]) - origin[:, 0]
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))


def packed_channels(num_masks: int) -> int:
    return -(-num_masks // PACKED_BITS)


def unpack_masks(packed: torch.Tensor, num_masks: int) -> torch.Tensor:
    """int (ceil(n / 24), *shape) -> bool (n, *shape), inverting `pack_masks`."""
    packed = packed.numpy()
    out = np.empty((num_masks, *packed.shape[1:]), dtype=bool)
    for k in range(num_masks):
        channel, bit = divmod(k, PACKED_BITS)
        np.not_equal(packed[channel] & (1 << bit), 0, out=out[k])
    return torch.from_numpy(out)


def augment_view(transforms, image: np.ndarray, packed: np.ndarray,
                 num_masks: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one view's transforms on a region.

    image: float (C, *region); packed: int32 (ceil(n / 24), *region), the n = `num_masks`
    masks as `pack_masks` packs them (n may be 0). Neither input is modified.
    Returns (float32 (C, *patch), bool (n, *patch)).

    The masks cross the transforms bit-packed: nearest-neighbour sampling moves whole voxel
    values, so unpacking gives exactly the masks sampled one by one, at a fraction of the cost
    (at 128^3, resampling 12 separate mask channels took most of a sample's time).
    """
    # a copy: bgv2's intensity transforms work in place, and a plain crop is a view of its input
    data = {"image": torch.from_numpy(np.array(image, dtype=np.float32, copy=True))}
    if num_masks:  # a zero-channel segmentation has nothing to move (and grid_sample rejects it)
        data["segmentation"] = torch.from_numpy(np.ascontiguousarray(packed, dtype=np.int32))
    out = transforms(**data)
    patch_shape = out["image"].shape[1:]
    if num_masks:
        return out["image"], unpack_masks(out["segmentation"], num_masks)
    return out["image"], torch.zeros((0, *patch_shape), dtype=torch.bool)
