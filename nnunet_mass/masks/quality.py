"""Proposal quality where labels exist: average best overlap (ABO) and recall at an IoU.

For every ground-truth structure the best IoU of any proposal is taken; ABO is the mean of
these best IoUs and recall@t the fraction of structures whose best IoU reaches t. A
structure is either one label value (`instances=False`) or one connected component of a
label value (`instances=True`), which is the fairer unit for connected proposals when a
label holds several separate objects (two kidneys, a row of vertebrae).

IoUs between two label maps come from one joint histogram (bincount) of their values, so a
whole MaskStack layer is scored at once instead of mask by mask.
"""
import numpy as np
from scipy import ndimage

from nnunet_mass.masks.stack import MaskStack


def _compact_values(labels: np.ndarray) -> tuple:
    """(codes int64 (z, y, x) with 0 kept as 0 and the present values as 1..n, values (n,))."""
    flat = np.asarray(labels).ravel()
    if flat.size and flat.min() < 0:
        raise ValueError("label maps must not hold negative values")
    values = np.flatnonzero(np.bincount(flat.astype(np.int64)))
    values = values[values > 0]
    lookup = np.zeros(int(values[-1]) + 1 if values.size else 1, dtype=np.int64)
    lookup[values] = np.arange(1, values.size + 1)
    return lookup[flat].reshape(labels.shape), values


def overlap_counts(a: np.ndarray, b: np.ndarray, na: int, nb: int) -> tuple:
    """(intersections (na+1, nb+1), sizes of a's values (na+1,), sizes of b's (nb+1,)).

    `a` and `b` are non-negative integer label maps of one shape with values <= na, nb.
    Row/column 0 (background) of the intersection matrix is left at 0.
    """
    a, b = a.ravel(), b.ravel()
    size_a = np.bincount(a, minlength=na + 1)[: na + 1]
    size_b = np.bincount(b, minlength=nb + 1)[: nb + 1]
    inside = np.flatnonzero(a)  # only voxels labelled in `a` can contribute
    joint = a[inside].astype(np.int64) * (nb + 1) + b[inside]
    inter = np.bincount(joint, minlength=(na + 1) * (nb + 1)).reshape(na + 1, nb + 1)
    inter[:, 0] = 0
    return inter, size_a, size_b


def iou_matrix(a: np.ndarray, b: np.ndarray, na: int, nb: int) -> np.ndarray:
    """IoU (na+1, nb+1) between every value of label map `a` and every value of `b` (row/column 0 unused)."""
    inter, size_a, size_b = overlap_counts(a, b, na, nb)
    union = size_a[:, None] + size_b[None, :] - inter
    return np.where(inter > 0, inter / np.maximum(union, 1), 0.0)


def best_overlaps(gt_labels: np.ndarray, stack: MaskStack) -> dict:
    """{ground-truth value: best IoU over all proposals in `stack`} for every non-zero value.

    Masks listed in `stack.masks` are scored; layer values not listed there are ignored.
    """
    gt_labels = np.asarray(gt_labels)
    if gt_labels.shape != stack.layers.shape[1:]:
        raise ValueError(f"labels {gt_labels.shape} and mask layers {stack.layers.shape[1:]} differ in shape")
    codes, values = _compact_values(gt_labels)
    best = np.zeros(values.size + 1)
    listed = {}
    for info in stack.masks:
        listed.setdefault(info.layer, []).append(info.label)
    for layer_index, labels in listed.items():
        layer = stack.layers[layer_index]
        n = int(layer.max())
        iou = iou_matrix(codes, layer, values.size, n)
        keep = np.zeros(n + 1, dtype=bool)
        keep[np.asarray(labels)] = True
        best = np.maximum(best, np.where(keep[None, :], iou, 0.0).max(axis=1))
    return {int(v): float(best[i + 1]) for i, v in enumerate(values)}


def instance_labels(labels: np.ndarray, min_voxels: int = 1) -> tuple:
    """Connected components (face connectivity) of every label value.

    Returns (instances int32 (z, y, x) numbered 1..n, {instance: label value}); components
    smaller than `min_voxels` are left out (set to 0).
    """
    labels = np.asarray(labels)
    instances = np.zeros(labels.shape, dtype=np.int32)
    owner = {}
    for value in np.unique(labels[labels > 0]):
        components, count = ndimage.label(labels == value)
        sizes = np.bincount(components.ravel(), minlength=count + 1)
        for component in np.flatnonzero(sizes[1:] >= min_voxels) + 1:
            owner[len(owner) + 1] = int(value)
            instances[components == component] = len(owner)
    return instances, owner


def _aggregate(ious: list, threshold: float) -> dict:
    if not ious:
        return {"abo": float("nan"), "recall": float("nan"), "count": 0}
    ious = np.asarray(ious, dtype=float)
    return {"abo": float(ious.mean()), "recall": float((ious >= threshold).mean()), "count": int(ious.size)}


def summarize_quality(gt_labels: np.ndarray, stack: MaskStack, instances: bool = False,
                      min_voxels: int = 1, iou_threshold: float = 0.5) -> dict:
    """ABO and recall@`iou_threshold` per label value and overall.

    Returns {"per_label": {value: {"abo", "recall", "count"}}, "overall": {...} (mean over
    all structures), "label_mean": {"abo", "recall"} (mean of the per-label figures, each
    label weighted equally), "best": {structure: best IoU}}. With `instances` a structure is
    a connected component of at least `min_voxels` voxels; otherwise a whole label value.
    """
    if instances:
        structures, owner = instance_labels(gt_labels, min_voxels)
    else:
        structures = np.asarray(gt_labels)
        owner = {int(v): int(v) for v in np.unique(structures[structures > 0])}
    best = best_overlaps(structures, stack) if owner else {}
    per_label = {}
    for structure, value in owner.items():
        per_label.setdefault(value, []).append(best.get(structure, 0.0))
    summary = {value: _aggregate(ious, iou_threshold) for value, ious in sorted(per_label.items())}
    label_mean = {key: float(np.mean([s[key] for s in summary.values()])) if summary else float("nan")
                  for key in ("abo", "recall")}
    return {"per_label": summary, "overall": _aggregate(list(best.values()), iou_threshold),
            "label_mean": label_mean, "best": best}
