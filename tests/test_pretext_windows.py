"""Anchor, pre-crop and the two windows of a pretext sample."""
import numpy as np
import pytest

from nnunet_mass.pretext.windows import (centred_box, draw_view_pair, draw_window, grow, hull, intersection_volume,
                                         overlap_fraction, precrop_size, slices_within)


def contains(box, point) -> bool:
    return bool(np.all(box[:, 0] <= point) and np.all(point < box[:, 1]))


def inside(box, outer) -> bool:
    return bool(np.all(box[:, 0] >= outer[:, 0]) and np.all(box[:, 1] <= outer[:, 1]))


@pytest.mark.parametrize("shape, patch, min_overlap", [
    ((40, 36, 32), (16, 16, 16), 0.67),
    ((24, 24, 24), (32, 32, 32), 0.67),   # volume smaller than the patch
    ((5, 60, 50), (7, 24, 20), 0.5),      # thin volume, odd sizes
    ((30, 30, 30), (9, 10, 11), 0.9),
    ((12, 40, 40), (1, 24, 24), 0.67),    # 2D patch on nnU-Net's pseudo-3D grid (z = 1)
    ((8, 8, 8), (2, 3, 1), 0.67),         # tiny windows
])
def test_every_draw_keeps_the_overlap_and_the_anchor(shape, patch, min_overlap):
    rng = np.random.default_rng(0)
    size = precrop_size(patch, min_overlap)
    assert np.all(size >= patch) and np.all(size <= (2 - min_overlap) * np.asarray(patch))
    for _ in range(2000):
        views = draw_view_pair(shape, patch, min_overlap, rng)
        assert np.all(views.anchor >= 0) and np.all(views.anchor < shape)  # anchor in the volume
        assert np.array_equal(views.precrop[:, 1] - views.precrop[:, 0], size)
        for window in (views.reference, views.query):
            assert np.array_equal(window[:, 1] - window[:, 0], patch)
            assert contains(window, views.anchor) and inside(window, views.precrop)
        assert np.all(overlap_fraction(views.reference, views.query) >= min_overlap - 1e-12)


def test_windows_reach_past_small_volumes_as_padding():
    rng = np.random.default_rng(1)
    shape, patch = (10, 12, 8), (32, 32, 32)
    below = above = 0
    for _ in range(200):
        views = draw_view_pair(shape, patch, 0.67, rng)
        below += np.any(views.reference[:, 0] < 0)
        above += np.any(views.reference[:, 1] > np.asarray(shape))
        assert contains(views.reference, views.anchor)
    assert below == 200 and above == 200  # a 32-voxel window always overhangs a 12-voxel volume


def test_anchor_is_uniform_over_the_volume():
    rng = np.random.default_rng(2)
    anchors = np.array([draw_view_pair((3, 4, 5), (2, 2, 2), 0.67, rng).anchor for _ in range(6000)])
    flat = np.ravel_multi_index(anchors.T, (3, 4, 5))
    counts = np.bincount(flat, minlength=60)
    assert counts.min() > 0.6 * 100 and counts.max() < 1.4 * 100  # 100 expected per voxel


def test_window_positions_cover_every_admissible_offset():
    rng = np.random.default_rng(3)
    anchor, patch = np.array([50]), (10,)
    precrop = centred_box(anchor, precrop_size(patch, 0.5))  # 15 voxels: [43, 58)
    starts = {int(draw_window(anchor, precrop, patch, rng)[0, 0]) for _ in range(500)}
    assert starts == set(range(43, 49))  # from the pre-crop's start up to 58 - 10, all holding the anchor


def test_2d_patches_keep_the_anchor_slice():
    rng = np.random.default_rng(4)
    for _ in range(100):
        views = draw_view_pair((9, 30, 30), (1, 16, 16), 0.67, rng)
        assert views.reference[0, 0] == views.query[0, 0] == views.anchor[0]


def test_box_helpers():
    a = np.array([[0, 10], [5, 9]])
    b = np.array([[4, 20], [-2, 6]])
    assert np.array_equal(grow(a, [1, 2]), [[-1, 11], [3, 11]])
    assert np.array_equal(hull(a, b), [[0, 20], [-2, 9]])
    assert slices_within(np.array([[2, 5], [6, 8]]), a) == (slice(2, 5), slice(1, 3))
    with pytest.raises(ValueError, match="not inside"):
        slices_within(b, a)
    assert np.allclose(overlap_fraction(a, b), [0.6, 0.25])
    boxes = np.stack([a, b, np.array([[10, 12], [0, 9]])])
    assert intersection_volume(a, boxes).tolist() == [40, 6 * 1, 0]
    with pytest.raises(ValueError, match="min_overlap"):
        precrop_size((8, 8, 8), 0)
