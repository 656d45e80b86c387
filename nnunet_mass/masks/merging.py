"""Hierarchical merging of adjacent regions: one partition per contrast threshold.

Start: fine base regions (int (z, y, x), 0 outside the body). Two adjacent regions A and B
differ, in z-score units, by

- their mean difference |mean_A - mean_B| (Euclidean over channels): right for piecewise-
  constant tissue, but a slowly varying intensity (an MR bias field, texture) makes distant
  parts of one organ differ;
- their edge contrast |mean over the faces shared by A and B of f(x + r) - f(x - r)|:
  features sampled about `radius_mm` either side of each face, across it, the step oriented
  from A to B. It is local, so a bias field hardly raises it; the signed mean lets noise
  cancel; sampling beyond the face keeps a blurred edge's contrast. Two organs of equal
  intensity separated by a thin layer of another tissue have a low mean difference but a
  high edge contrast.

A "lenient" hierarchy merges on the smaller of the two, a "strict" one on the larger; both
scale it by min(1, sqrt(n_h / reliable_voxels)) with n_h = n_A n_B / (n_A + n_B), because
a small region's statistics are noisy and partial-volume biased. Measured on the CT and MR
phantoms, the two hierarchies together recover more structures than either alone.

Merging runs in rounds, vectorised over all edges: every round merges each region whose
cheapest edge is below the threshold into that neighbour when the neighbour is larger and
stays itself (stars, never chains), then recomputes the costs; when no edge is below the
threshold, the partition is recorded and the next threshold starts.
"""
import copy
from collections.abc import Iterator

import numpy as np
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components


def _face_slices(ndim: int, axis: int, lo: int, hi: int) -> tuple:
    return tuple(slice(lo, hi) if a == axis else slice(None) for a in range(ndim))


def boundary_steps(labels: np.ndarray, features: np.ndarray, spacing, radius_mm: float) -> tuple:
    """Adjacent label pairs and their summed, oriented feature steps.

    Returns (pairs (E, 2) with a < b, face counts (E,), step sums (E, C)): a face's step is
    f(far on b's side) - f(far on a's side), sampled about `radius_mm` from the face along
    its axis. Summing signed steps lets noise cancel while a real edge adds up.
    """
    keys, steps = [], []
    n = int(labels.max()) + 1
    for axis, spacing_mm in enumerate(spacing):
        size = labels.shape[axis]
        if size < 2:
            continue
        lo = labels[_face_slices(labels.ndim, axis, 0, -1)]
        hi = labels[_face_slices(labels.ndim, axis, 1, None)]
        touching = (lo != hi) & (lo > 0) & (hi > 0)
        a, b = lo[touching].astype(np.int64), hi[touching].astype(np.int64)
        keys.append(np.minimum(a, b) * n + np.maximum(a, b))
        reach = max(1, int(round(radius_mm / spacing_mm)))
        faces = np.arange(size - 1)
        ahead, behind = np.minimum(faces + reach, size - 1), np.maximum(faces + 1 - reach, 0)
        sign = np.where(b > a, 1.0, -1.0)  # the sample ahead lies in `hi`'s direction
        steps.append(np.stack([(np.take(c, ahead, axis=axis) - np.take(c, behind, axis=axis))[touching] * sign
                               for c in features], 1))
    if not keys:
        return np.zeros((0, 2), np.int64), np.zeros(0), np.zeros((0, features.shape[0]))
    unique, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    counts = np.bincount(inverse, minlength=unique.size).astype(np.float64)
    steps = np.concatenate(steps)
    sums = np.stack([np.bincount(inverse, weights=steps[:, c], minlength=unique.size)
                     for c in range(steps.shape[1])], 1)
    return np.stack(np.divmod(unique, n), 1), counts, sums


class RegionGraph:
    """Regions (sizes, feature sums) and their shared boundaries (face counts, oriented step sums)."""

    def __init__(self, base: np.ndarray, features: np.ndarray, spacing, radius_mm: float):
        n = int(base.max())
        flat = base.ravel()
        self.size = np.bincount(flat, minlength=n + 1).astype(np.float64)
        self.sums = np.stack([np.bincount(flat, weights=c.ravel(), minlength=n + 1) for c in features], 1)
        pairs, self.faces, self.steps = boundary_steps(base, features, spacing, radius_mm)
        self.a, self.b = pairs[:, 0], pairs[:, 1]
        self.to_base = np.arange(n + 1, dtype=np.int32)  # current region of every base region

    def costs(self, reliable_voxels: float, criterion: str) -> np.ndarray:
        means = self.sums / np.maximum(self.size, 1)[:, None]
        difference = np.sqrt(((means[self.a] - means[self.b]) ** 2).sum(1))
        edge = np.sqrt((self.steps ** 2).sum(1)) / self.faces
        contrast = np.minimum(difference, edge) if criterion == "lenient" else np.maximum(difference, edge)
        na, nb = self.size[self.a], self.size[self.b]
        return contrast * np.minimum(1.0, np.sqrt(na * nb / (na + nb) / reliable_voxels))

    def merge(self, edges: np.ndarray) -> None:
        """Merge the two regions of every edge in `edges` (indices), transitively."""
        n = self.size.size
        graph = coo_matrix((np.ones(edges.size), (self.a[edges], self.b[edges])), shape=(n, n))
        _, group = connected_components(graph, directed=False)
        # renumber so that the background (0) stays 0 and groups keep their first region's order
        _, first, group = np.unique(group, return_index=True, return_inverse=True)
        group = np.argsort(np.argsort(first))[group]
        count = int(group.max()) + 1
        self.size = np.bincount(group, weights=self.size, minlength=count)
        self.sums = np.stack([np.bincount(group, weights=c, minlength=count) for c in self.sums.T], 1)
        self.to_base = group.astype(np.int32)[self.to_base]
        a, b = group[self.a], group[self.b]
        keep = a != b
        a, b, steps = a[keep], b[keep], self.steps[keep]
        steps[a > b] *= -1  # orientation follows the label order
        a, b = np.minimum(a, b), np.maximum(a, b)
        unique, inverse = np.unique(a * count + b, return_inverse=True)
        self.faces = np.bincount(inverse, weights=self.faces[keep], minlength=unique.size)
        self.steps = np.stack([np.bincount(inverse, weights=steps[:, c], minlength=unique.size)
                               for c in range(steps.shape[1])], 1)
        self.a, self.b = np.divmod(unique, count)


def cheapest_edges(costs: np.ndarray, a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    """(n,) index of every region's cheapest edge (ties: lower edge index), -1 for none."""
    count = costs.size
    order = np.lexsort((np.arange(count), costs))  # edges by cost, then index
    ends = np.concatenate([a[order], b[order]])
    edges = np.concatenate([order, order])
    rank = np.concatenate([np.arange(count), np.arange(count)])
    by_region = np.lexsort((rank, ends))
    ends, edges = ends[by_region], edges[by_region]
    first = np.r_[True, ends[1:] != ends[:-1]]
    best = np.full(n, -1)
    best[ends[first]] = edges[first]
    return best


def absorptions(costs: np.ndarray, a: np.ndarray, b: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Edges to merge in one round: every region goes into the neighbour of its cheapest edge
    if that neighbour is larger (ties: higher index) and does not itself go anywhere this
    round, so a round builds stars around regions that stay, never chains."""
    n = size.size
    best = cheapest_edges(costs, a, b, n)
    regions = np.flatnonzero(best >= 0)
    edge = best[regions]
    target = np.where(a[edge] == regions, b[edge], a[edge])
    larger = (size[target] > size[regions]) | ((size[target] == size[regions]) & (target > regions))
    leaves = np.zeros(n, dtype=bool)
    leaves[regions[larger]] = True
    chosen = larger & ~leaves[target]
    return edge[chosen]


CRITERIA = ("lenient", "strict")


def merge_hierarchies(base: np.ndarray, features: np.ndarray, spacing, thresholds, reliable_voxels: float,
                      radius_mm: float, criteria=CRITERIA) -> Iterator[tuple]:
    """Yields (criterion, threshold, int32 (z, y, x) partition) for every criterion and
    threshold (ascending); regions are numbered from 1, 0 stays outside."""
    unknown = set(criteria) - set(CRITERIA)
    if unknown:
        raise ValueError(f"unknown merge criteria {sorted(unknown)}; choose from {CRITERIA}")
    start = RegionGraph(base, features, spacing, radius_mm)
    for criterion in criteria:
        graph = copy.deepcopy(start)
        for threshold in sorted(thresholds):
            while graph.a.size:
                costs = graph.costs(reliable_voxels, criterion)
                candidates = np.flatnonzero(costs < threshold)
                if candidates.size == 0:
                    break
                chosen = absorptions(costs[candidates], graph.a[candidates], graph.b[candidates], graph.size)
                graph.merge(candidates[chosen])
            yield criterion, threshold, graph.to_base[base]
