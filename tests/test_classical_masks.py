"""The classical mask proposal generator on small synthetic volumes with known objects."""
import argparse
import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from nnunet_mass.masks.classical import (GENERATOR_NAME, ProposalSettings, add_settings_arguments, propose_masks,
                                         settings_from_args)
from nnunet_mass.masks.pruning import ProposalBuilder
from nnunet_mass.masks.quality import best_overlaps
from nnunet_mass.masks.stack import MaskStack

SPACING = (2.0, 2.0, 2.0)  # mm, (z, y, x)


def scene(shape=(40, 44, 48), seed=0):
    """(image (1, z, y, x), labels, body): an ellipsoid body (0) in air (-2) holding a bright
    sphere (1), a dark sphere (-1) and a bright tube along z (2), plus noise; labels 1-3."""
    z, y, x = np.indices(shape, dtype=float)
    c = [(n - 1) / 2 for n in shape]
    body = ((z - c[0]) / 18) ** 2 + ((y - c[1]) / 19) ** 2 + ((x - c[2]) / 21) ** 2 <= 1
    labels = np.zeros(shape, np.uint8)
    labels[(z - 14) ** 2 + (y - 16) ** 2 + (x - 16) ** 2 <= 36] = 1
    labels[(z - 24) ** 2 + (y - 28) ** 2 + (x - 30) ** 2 <= 25] = 2
    labels[((y - 30) ** 2 + (x - 15) ** 2 <= 9) & (np.abs(z - c[0]) <= 12)] = 3
    labels[~body] = 0
    image = np.where(body, 0.0, -2.0) + np.array([0.0, 1.0, -1.0, 2.0])[labels]
    image += np.random.default_rng(seed).normal(0, 0.05, shape)
    return image.astype(np.float32)[None], labels, body


@pytest.fixture(scope="module")
def case():
    image, labels, body = scene()
    return image, labels, body, propose_masks(image, SPACING)


def all_masks(stack: MaskStack) -> np.ndarray:
    return np.stack([stack.mask(i) for i in range(len(stack))])


def test_every_object_is_recovered(case):
    _, labels, _, stack = case
    best = best_overlaps(labels, stack)
    assert set(best) == {1, 2, 3}
    assert min(best.values()) > 0.8, best


def test_deterministic(case):
    image, _, _, stack = case
    again = propose_masks(image.copy(), SPACING)
    assert np.array_equal(stack.layers, again.layers)
    assert stack.masks == again.masks


def test_stack_format_and_index(case):
    _, _, _, stack = case
    assert GENERATOR_NAME == "classical-v1"
    assert stack.layers.dtype == np.uint16 and stack.layers.shape[1:] == (40, 44, 48)
    for index, layer in enumerate(stack.layers):  # consecutive labels, each listed once
        listed = sorted(m.label for m in stack.masks if m.layer == index)
        assert listed == list(range(1, int(layer.max()) + 1))
    sources = {m.source.split("_")[0] for m in stack.masks}
    assert {"merge", "intensity", "supervoxels"} <= sources


def test_masks_stay_inside_the_body_are_connected_and_sized(case):
    _, _, body, stack = case
    settings = ProposalSettings()
    grown = ndimage.binary_dilation(body, iterations=2)  # the computed body may differ by a voxel or so
    assert not stack.layers[:, ~grown].any()
    min_voxels = max(settings.min_voxels, np.ceil(settings.min_size_ml / (np.prod(SPACING) / 1000)))
    for index, info in enumerate(stack.masks):
        mask = stack.mask(index)
        assert info.voxels == mask.sum() >= min_voxels
        assert info.voxels <= settings.max_fraction_of_body * body.sum() * 1.05
        assert ndimage.label(mask)[1] == 1  # one face-connected piece


def test_no_near_duplicates_remain(case):
    _, _, _, stack = case
    masks = all_masks(stack).reshape(len(stack), -1).astype(np.float32)
    inter = masks @ masks.T
    sizes = masks.sum(1)
    iou = inter / (sizes[:, None] + sizes[None, :] - inter)
    np.fill_diagonal(iou, 0)
    assert iou.max() < ProposalSettings().nms_iou


def test_count_within_limits(case):
    image, _, _, stack = case
    assert 1 <= len(stack) <= ProposalSettings().max_proposals
    capped = propose_masks(image, SPACING, ProposalSettings(max_proposals=5))
    assert 1 <= len(capped) <= 5
    # the cap trims the most fragmented layers: the large objects survive it
    assert min(best_overlaps(case[1], propose_masks(image, SPACING, ProposalSettings(max_proposals=60))).values()) > 0.8


def test_builder_suppresses_duplicates_across_layers():
    body = np.ones((10, 10, 10), bool)
    first = np.zeros(body.shape, np.int32)
    first[:5], first[5:] = 1, 2
    near = first.copy()
    near[4, 0, :5] = 2  # IoU with `first` well above 0.9
    other = np.zeros(body.shape, np.int32)
    other[:, :5], other[:, 5:] = 1, 2  # IoU 1/3 with the halves of `first`
    builder = ProposalBuilder(body, min_voxels=1, max_voxels=1000)
    for layer, source in [(first, "a"), (first, "copy"), (near, "near"), (other, "other")]:
        builder.add(layer, source)
    stack = builder.finish(nms_iou=0.9, max_proposals=100)
    assert sorted(m.source for m in stack.masks) == ["a", "a", "other", "other"]
    assert len({m.layer for m in stack.masks}) == 2  # overlapping masks need two layers


def test_second_channel_is_used():
    image, labels, _ = scene()
    z, y, x = np.indices(labels.shape)
    hidden = ((z - 26) ** 2 + (y - 14) ** 2 + (x - 34) ** 2 <= 25) & (labels == 0) & (image[0] > -1)
    second = np.where(image[0] > -1, 0.0, -2.0) + 1.5 * hidden
    second += np.random.default_rng(1).normal(0, 0.05, labels.shape)
    two = np.concatenate([image, second[None].astype(np.float32)])
    target = hidden.astype(np.uint8)
    assert best_overlaps(target, propose_masks(two, SPACING))[1] > 0.8
    assert best_overlaps(target, propose_masks(image, SPACING))[1] < 0.5  # invisible in channel 0


def test_constant_image_gives_an_empty_stack():
    stack = propose_masks(np.full((1, 12, 12, 12), 3.0, np.float32), SPACING)
    assert len(stack) == 0 and stack.layers.shape == (0, 12, 12, 12)


@pytest.mark.parametrize("image, spacing, message", [
    (np.zeros((12, 12, 12), np.float32), SPACING, "must be \\(C, z, y, x\\)"),
    (np.full((1, 12, 12, 12), np.nan, np.float32), SPACING, "NaN"),
    (np.zeros((1, 1, 12, 12), np.float32), SPACING, ">= 2 voxels"),
    (np.zeros((0, 12, 12, 12), np.float32), SPACING, ">= 1 channel"),
    (np.zeros((1, 12, 12, 12), np.float32), (2.0, 2.0), "spacing"),
    (np.zeros((1, 12, 12, 12), np.float32), (2.0, -1.0, 2.0), "spacing"),
])
def test_bad_input_raises_value_error(image, spacing, message):
    with pytest.raises(ValueError, match=message):
        propose_masks(image, spacing)


@pytest.mark.parametrize("change", [{"nms_iou": 0}, {"nms_iou": 1.5}, {"max_proposals": 0},
                                    {"merge_criteria": ("sloppy",)}, {"intensity_clusters": (1,)},
                                    {"supervoxel_sizes_mm": (0.0,)}])
def test_bad_settings_raise_value_error(change):
    with pytest.raises(ValueError, match="ProposalSettings"):
        propose_masks(np.zeros((1, 12, 12, 12), np.float32), SPACING, ProposalSettings(**change))


def test_settings_arguments_round_trip():
    parser = argparse.ArgumentParser()
    parser.add_argument("-d")  # flags of the host command stay untouched
    add_settings_arguments(parser)
    assert settings_from_args(parser.parse_args([])) == ProposalSettings()
    flags = {f.name for f in dataclasses.fields(ProposalSettings)}
    assert flags <= set(vars(parser.parse_args([])))

    args = parser.parse_args(["-d", "7", "--max_proposals", "15", "--nms_iou", "0.8", "--no-fill_holes",
                              "--supervoxel_sizes_mm", "10", "20", "--merge_criteria", "strict",
                              "--intensity_clusters", "4"])
    settings = settings_from_args(args)
    assert settings == dataclasses.replace(ProposalSettings(), max_proposals=15, nms_iou=0.8, fill_holes=False,
                                           supervoxel_sizes_mm=(10.0, 20.0), merge_criteria=("strict",),
                                           intensity_clusters=(4,))
    assert isinstance(settings.supervoxel_sizes_mm, tuple) and args.d == "7"
