"""Proposal quality metrics (best IoU per structure, ABO, recall) on hand-made cases."""
import numpy as np
import pytest

from nnunet_mass.masks.quality import (best_overlaps, instance_labels, iou_matrix, overlap_counts,
                                       summarize_quality)
from nnunet_mass.masks.stack import MaskInfo, MaskStack

SHAPE = (4, 6, 8)


def box(z=slice(None), y=slice(None), x=slice(None)) -> np.ndarray:
    mask = np.zeros(SHAPE, bool)
    mask[z, y, x] = True
    return mask


def stack_of(*masks) -> MaskStack:
    """One layer per mask (value 1)."""
    return MaskStack.from_layers([m.astype(np.uint16) for m in masks], [f"m{i}" for i in range(len(masks))])


def test_perfect_proposal_scores_one_and_missing_scores_zero():
    gt = np.zeros(SHAPE, np.uint8)
    gt[box(x=slice(0, 4))] = 3
    gt[box(x=slice(6, 8))] = 7
    best = best_overlaps(gt, stack_of(box(x=slice(0, 4))))
    assert best == {3: 1.0, 7: 0.0}


def test_partial_overlap_is_the_exact_iou():
    gt = box(x=slice(0, 4)).astype(np.uint8)
    half = box(x=slice(2, 6))  # intersection 2 columns, union 6 columns
    assert best_overlaps(gt, stack_of(half))[1] == pytest.approx(1 / 3)
    both = stack_of(half, box(x=slice(0, 3)))  # the best of several proposals counts
    assert best_overlaps(gt, both)[1] == pytest.approx(3 / 4)


def test_masks_sharing_a_layer_and_unlisted_values():
    gt = box(x=slice(0, 4)).astype(np.uint8)
    layer = np.zeros(SHAPE, np.uint16)
    layer[box(x=slice(0, 4))] = 2  # a perfect mask, but not listed in the index
    layer[box(x=slice(4, 8))] = 1
    stack = MaskStack(layer[None], [MaskInfo(0, 1, int((layer == 1).sum()), "s")])
    assert best_overlaps(gt, stack)[1] == 0.0
    stack.masks.append(MaskInfo(0, 2, int((layer == 2).sum()), "s"))
    assert best_overlaps(gt, stack)[1] == 1.0


def test_summary_counts_recall_at_the_threshold():
    gt = np.zeros(SHAPE, np.uint8)
    gt[box(x=slice(0, 2))] = 1
    gt[box(x=slice(2, 5))] = 2
    gt[box(x=slice(5, 8))] = 3
    proposals = stack_of(box(x=slice(0, 2)),  # label 1: IoU 1
                         box(x=slice(2, 4)),  # label 2: IoU 2/3
                         box(x=slice(4, 6)))  # label 3: IoU 1/4
    summary = summarize_quality(gt, proposals)
    assert summary["best"] == pytest.approx({1: 1.0, 2: 2 / 3, 3: 1 / 4})
    assert summary["overall"]["abo"] == pytest.approx((1 + 2 / 3 + 1 / 4) / 3)
    assert summary["overall"]["recall"] == pytest.approx(2 / 3) and summary["overall"]["count"] == 3
    assert summary["per_label"][3] == {"abo": pytest.approx(0.25), "recall": 0.0, "count": 1}
    assert summarize_quality(gt, proposals, iou_threshold=0.2)["overall"]["recall"] == 1.0


def test_instances_split_a_label_into_its_components():
    gt = np.zeros(SHAPE, np.uint8)
    gt[box(x=slice(0, 2))] = 5
    gt[box(x=slice(5, 8))] = 5  # a second, separate piece of label 5
    gt[0, 0, 3] = 5  # a one-voxel speck
    proposals = stack_of(box(x=slice(0, 2)))
    whole = summarize_quality(gt, proposals)
    assert whole["per_label"][5]["count"] == 1 and whole["overall"]["abo"] == pytest.approx(48 / 121)
    split = summarize_quality(gt, proposals, instances=True, min_voxels=2)
    assert split["per_label"][5] == {"abo": pytest.approx(0.5), "recall": 0.5, "count": 2}
    instances, owner = instance_labels(gt, min_voxels=2)
    assert owner == {1: 5, 2: 5} and instances[0, 0, 3] == 0


def test_no_structures_and_no_proposals():
    empty = MaskStack(np.zeros((0, *SHAPE), np.uint16), [])
    assert best_overlaps(box(x=slice(0, 2)).astype(np.uint8), empty) == {1: 0.0}
    summary = summarize_quality(np.zeros(SHAPE, np.uint8), empty)
    assert summary["best"] == {} and np.isnan(summary["overall"]["abo"])


def test_iou_matrix_matches_brute_force():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, SHAPE)
    b = rng.integers(0, 6, SHAPE)
    fast = iou_matrix(a, b, 3, 5)
    for i in range(1, 4):
        for j in range(1, 6):
            inter = np.sum((a == i) & (b == j))
            assert fast[i, j] == pytest.approx(inter / np.sum((a == i) | (b == j)))
    inter, size_a, size_b = overlap_counts(a, b, 3, 5)
    assert size_a.tolist() == np.bincount(a.ravel(), minlength=4).tolist()
    assert size_b.tolist() == np.bincount(b.ravel(), minlength=6).tolist()


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        best_overlaps(np.zeros((2, 2, 2), np.uint8), stack_of(box()))
