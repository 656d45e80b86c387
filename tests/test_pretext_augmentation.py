"""Weak and strong view augmentations: patch-sized output, binary masks aligned with the image."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from scipy import ndimage

from nnunet_mass.masks.stack import MaskStack
from nnunet_mass.pretext.augmentation import (STRONG, WEAK, AffineOrCrop, AugmentationStrength, InPlaneRotation,
                                              augment_view, build_view_transforms, is_anisotropic, pack_layer_masks,
                                              pack_masks, unpack_masks, view_margin)


def ellipsoid_masks(region) -> np.ndarray:
    """Two overlapping smooth blobs and a half-space: bool (3, *region)."""
    grid = np.indices(region).astype(float)
    centre = (np.asarray(region, dtype=float) - 1) / 2
    radii = np.asarray(region, dtype=float) / np.array([4.0, 3.0, 5.0][:len(region)])
    first = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1
    second = sum(((g - c - r / 2) / r) ** 2 for g, c, r in zip(grid, centre, radii)) < 1
    return np.stack([first, second, grid[-1] > grid[-2]])


def region_for(patch, strength) -> tuple:
    return tuple(int(p + 2 * m) for p, m in zip(patch, view_margin(patch, strength)))


def seed_all(seed: int) -> None:
    np.random.seed(seed)
    torch.manual_seed(seed)


@pytest.mark.parametrize("strength", [WEAK, STRONG], ids=["weak", "strong"])
@pytest.mark.parametrize("patch", [(20, 24, 16), (24, 20)], ids=["3d", "2d"])
def test_masks_stay_binary_and_aligned_with_the_image(strength, patch):
    """The image is the first mask as a float: after the same spatial transform, thresholding the
    (linearly interpolated) image gives the (nearest-neighbour) mask up to boundary voxels."""
    always = replace(strength, spatial_p=1.0, intensity_p=0.0)
    region = region_for(patch, always)
    masks = ellipsoid_masks(region)
    transforms = build_view_transforms(patch, always)
    seed_all(0)
    for _ in range(8):
        image, out = augment_view(transforms, masks[:1].astype(np.float32), pack_masks(masks), len(masks))
        assert image.shape == (1, *patch) and image.dtype == torch.float32
        assert out.shape == (3, *patch) and out.dtype == torch.bool
        mask, thresholded = out[0].numpy(), image[0].numpy() > 0.5
        footprint = np.ones((3,) * len(patch), dtype=bool)
        boundary = ndimage.maximum_filter(mask, footprint=footprint) != ndimage.minimum_filter(mask, footprint=footprint)
        assert not np.any((mask != thresholded) & ~boundary)  # disagreement only where the mask changes
        assert (mask & thresholded).sum() >= 0.85 * (mask | thresholded).sum()


@pytest.mark.parametrize("strength", [WEAK, STRONG], ids=["weak", "strong"])
def test_full_augmentation_outputs_patch_sized_binary_views(strength):
    patch = (16, 20, 24)
    region = region_for(patch, strength)
    masks = ellipsoid_masks(region)
    image = np.random.default_rng(0).normal(size=(2, *region)).astype(np.float32)  # two channels
    transforms = build_view_transforms(patch, replace(strength, intensity_p=1.0))
    seed_all(1)
    for _ in range(4):
        out_image, out_masks = augment_view(transforms, image, pack_masks(masks), len(masks))
        assert out_image.shape == (2, *patch) and torch.isfinite(out_image).all()
        assert out_masks.shape == (3, *patch) and out_masks.dtype == torch.bool
    empty_image, empty_masks = augment_view(transforms, image, pack_masks(masks[:0]), 0)  # image only
    assert empty_image.shape == (2, *patch) and empty_masks.shape == (0, *patch)


def test_plain_crop_is_exactly_the_window():
    patch = (10, 12, 14)
    never = replace(STRONG, spatial_p=0.0, intensity_p=0.0)
    assert view_margin(patch, never).tolist() == [0, 0, 0]
    margin = view_margin(patch, STRONG)  # a region read for the affine branch, cropped instead
    region = tuple(int(p + 2 * m) for p, m in zip(patch, margin))
    image = np.random.default_rng(2).normal(size=(1, *region)).astype(np.float32)
    masks = ellipsoid_masks(region)
    crop_only = replace(STRONG, spatial_p=0.0, intensity_p=0.0)
    out_image, out_masks = augment_view(build_view_transforms(patch, crop_only), image, pack_masks(masks), 3)
    window = tuple(slice(int(m), int(m) + p) for m, p in zip(margin, patch))
    assert torch.equal(out_image, torch.from_numpy(image[(slice(None), *window)]))
    assert torch.equal(out_masks, torch.from_numpy(masks[(slice(None), *window)]))


@pytest.mark.parametrize("patch, planes", [((24, 24, 24), [(1, 2), (0, 2), (0, 1)]), ((20, 28), [(0, 1)])])
def test_margin_holds_single_plane_rotations_at_the_largest_zoom_out(patch, planes):
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

    strength = replace(WEAK, spatial_p=1.0)
    region = region_for(patch, strength)
    ones = torch.ones((1, *region))
    angle = math.radians(strength.rotation_deg)
    for plane in planes:
        for sign in (-1, 1):
            def rotation(image=None, dim=None, plane=plane, sign=sign):
                # bgv2's angle i turns the plane of the other two axes (2D: the only angle)
                axis = ({0, 1, 2} - set(plane)).pop() if len(patch) == 3 else dim
                return sign * angle if dim == axis else 0.0

            transform = SpatialTransform(patch, 0, False, p_rotation=1, rotation=rotation, p_scaling=1,
                                         scaling=(strength.scale[1], strength.scale[1]))
            out = transform(image=ones.clone())["image"]
            assert out.min() > 0.5, (plane, sign)  # every sample point lands inside the region read


def test_margins_for_2d_anisotropic_and_isotropic_patches():
    assert view_margin((128, 128, 128), WEAK).tolist() == [62, 62, 62]
    assert view_margin((160, 160), STRONG).tolist() == [77, 77]  # a square rotates symmetrically
    assert is_anisotropic((24, 160, 160)) and not is_anisotropic((64, 160, 160))
    margin = view_margin((24, 160, 160), WEAK)
    assert margin[0] == math.ceil(24 * (1.43 - 1) / 2) and margin[1] == margin[2]  # in-plane rotation only
    rotation = InPlaneRotation(0.5)
    np.random.seed(0)
    assert rotation(dim=1) == rotation(dim=2) == 0.0 and 0 < abs(rotation(dim=0)) <= 0.5


def test_weak_and_strong_presets_differ_as_designed():
    assert (WEAK.spatial_p, STRONG.spatial_p) == (0.5, 0.8)
    assert WEAK.intensity_p == STRONG.intensity_p == 0.2
    for name in ("multiplicative_brightness", "gamma", "contrast", "blur_sigma", "noise_std"):
        weak, strong = getattr(WEAK, name), getattr(STRONG, name)
        assert strong[0] <= weak[0] and strong[1] > weak[1], name  # strong ranges hold the weak ones
    assert STRONG.additive_brightness_std > WEAK.additive_brightness_std
    weak_t, strong_t = build_view_transforms((16, 16, 16), WEAK), build_view_transforms((16, 16, 16), STRONG)
    assert isinstance(weak_t.transforms[0], AffineOrCrop) and weak_t.transforms[0].p == 0.5
    assert strong_t.transforms[0].p == 0.8 and strong_t.transforms[0].affine.scaling == (0.7, 1.43)
    assert strong_t.transforms[0].affine.p_synchronize_scaling_across_axes == 0  # scale drawn per axis
    assert [t.apply_probability for t in strong_t.transforms[1:]] == [0.2] * 6
    assert strong_t.transforms[1].transform.multiplier_range == (0.8, 1.3)


def test_strong_changes_intensities_more_than_weak():
    patch = (16, 16, 16)
    smooth = ndimage.gaussian_filter(np.random.default_rng(3).normal(size=patch), 3)  # blur alone barely moves it
    image = ((smooth - smooth.mean()) / smooth.std()).astype(np.float32)[None]
    change = {}
    for name, strength in (("weak", WEAK), ("strong", STRONG)):
        transforms = build_view_transforms(patch, replace(strength, spatial_p=0.0, intensity_p=1.0))
        seed_all(4)
        change[name] = np.mean([float((augment_view(transforms, image, pack_masks(image[:0] > 0), 0)[0]
                                              - torch.from_numpy(image))
                                      .abs().mean()) for _ in range(30)])
    assert change["strong"] > 1.2 * change["weak"]


def test_strength_validation_and_scaling():
    assert STRONG.scaled(0.5).spatial_p == 0.4 and STRONG.scaled(2).intensity_p == 0.4
    assert STRONG.scaled(2).spatial_p == 1.0 and STRONG.scaled(0).gamma == STRONG.gamma
    with pytest.raises(ValueError, match="spatial_p"):
        AugmentationStrength(spatial_p=1.5)
    with pytest.raises(ValueError, match="gamma"):
        AugmentationStrength(spatial_p=0.5, gamma=(1.2, 0.8))


def test_packing_round_trip_and_from_layers():
    rng = np.random.default_rng(5)
    masks = rng.random((30, 6, 7, 8)) < 0.3  # more than 24 masks: two packed channels
    packed = pack_masks(masks)
    assert packed.shape == (2, 6, 7, 8) and packed.dtype == np.int32 and packed.max() < 2 ** 24
    assert np.array_equal(unpack_masks(torch.from_numpy(packed), 30).numpy(), masks)

    layers = [rng.integers(0, 5, size=(12, 14, 16)).astype(np.uint16) for _ in range(2)]
    stack = MaskStack.from_layers(layers, ["a", "b"]).with_bboxes()
    origin = np.array([[-3, 9], [2, 14], [4, 20]])  # a crop reaching past the volume
    crop = np.pad(stack.layers, [(0, 0), (3, 0), (0, 0), (0, 4)])[:, 0:12, 2:14, 4:20]
    chosen = [stack.masks[i] for i in (5, 0, 3)]
    expected = pack_masks(np.stack([crop[m.layer] == m.label for m in chosen]))
    assert np.array_equal(pack_layer_masks(crop, chosen, origin), expected)  # visiting bounding boxes only
    no_boxes = [MaskStack.from_layers(layers, ["a", "b"]).masks[i] for i in (5, 0, 3)]
    assert np.array_equal(pack_layer_masks(crop, no_boxes, origin), expected)


def test_packed_masks_move_exactly_like_separate_masks():
    from batchgeneratorsv2.transforms.spatial.spatial import SpatialTransform

    patch, region = (12, 14, 16), (20, 22, 24)
    masks = ellipsoid_masks(region)
    transform = SpatialTransform(patch, 0, False, p_rotation=1, rotation=(-0.5, 0.5), p_scaling=1,
                                 scaling=(0.7, 1.43), mode_seg="nearest")
    image = torch.zeros((1, *region))
    for seed in range(5):
        seed_all(seed)
        packed = transform(image=image.clone(), segmentation=torch.from_numpy(pack_masks(masks)))["segmentation"]
        seed_all(seed)
        separate = transform(image=image.clone(), segmentation=torch.from_numpy(masks.astype(np.uint8)))
        assert torch.equal(unpack_masks(packed, 3), separate["segmentation"].bool())
