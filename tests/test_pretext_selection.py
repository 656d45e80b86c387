"""Which masks a pretext sample draws, on which channels, and which tasks stay valid."""
import json

import numpy as np
import pytest

from nnunet_mass.masks.stack import MaskStack
from nnunet_mass.masks.store import open_mask_stack, save_mask_stack
from nnunet_mass.pretext.selection import assemble_tasks, draw_present_masks, plan_channels, present_masks
from nnunet_mass.pretext.windows import draw_view_pair

SHAPE = (24, 28, 32)
MIN_VOXELS = 27


def random_blobs(rng, count: int) -> np.ndarray:
    """A label map of `count` non-overlapping boxes of assorted sizes (some tiny)."""
    layer = np.zeros(SHAPE, dtype=np.uint16)
    for label in range(1, count + 1):
        size = rng.integers(1, 9, size=3)
        lo = rng.integers(0, np.asarray(SHAPE) - size)
        box = tuple(slice(a, a + s) for a, s in zip(lo, size))
        layer[box] = np.where(layer[box] == 0, label, layer[box])
    return layer


@pytest.fixture
def stacks(tmp_path):
    """The same masks stored twice: with bounding boxes, and as an index written before boxes."""
    rng = np.random.default_rng(0)
    z, y, x = np.indices(SHAPE)
    octants = (1 + (z >= 12) * 4 + (y >= 14) * 2 + (x >= 16)).astype(np.uint16)
    stack = MaskStack.from_layers([octants, random_blobs(rng, 40), random_blobs(rng, 40)], ["oct", "a", "b"])
    save_mask_stack(tmp_path / "boxed", "c", stack, {})
    save_mask_stack(tmp_path / "plain", "c", stack, {})
    index = json.loads((tmp_path / "plain" / "c.json").read_text())
    for entry in index["masks"]:
        del entry["bbox"]
    (tmp_path / "plain" / "c.json").write_text(json.dumps(index))
    return stack, open_mask_stack(tmp_path / "boxed", "c"), open_mask_stack(tmp_path / "plain", "c")


def voxels_in(stack: MaskStack, info, window) -> int:
    padded = np.pad(stack.layers[info.layer] == info.label, [(40, 40)] * 3)
    return int(padded[tuple(slice(lo + 40, hi + 40) for lo, hi in window)].sum())


def test_only_present_masks_are_drawn_without_duplicates(stacks):
    stack, boxed, _ = stacks
    rng = np.random.default_rng(1)
    for _ in range(100):
        window = draw_view_pair(SHAPE, (12, 12, 12), 0.67, rng).reference
        drawn = draw_present_masks(boxed, window, MIN_VOXELS, 12, rng)
        present = present_masks(boxed, window, MIN_VOXELS)
        assert len(drawn) == min(12, len(present))
        assert len(set(drawn)) == len(drawn)
        assert all(voxels_in(stack, info, window) >= MIN_VOXELS for info in drawn)
        assert {boxed.masks.index(info) for info in drawn} <= set(present)


def test_bbox_path_draws_exactly_what_counting_draws(stacks):
    _, boxed, plain = stacks
    assert boxed.has_bboxes and not plain.has_bboxes
    rng = np.random.default_rng(2)
    for trial in range(100):
        window = draw_view_pair(SHAPE, (10, 14, 12), 0.67, rng).reference
        assert present_masks(boxed, window, MIN_VOXELS) == present_masks(plain, window, MIN_VOXELS)
        with_boxes = draw_present_masks(boxed, window, MIN_VOXELS, 5, np.random.default_rng(trial))
        counted = draw_present_masks(plain, window, MIN_VOXELS, 5, np.random.default_rng(trial))
        assert with_boxes == counted


class ReadSpy:
    """A mask source that records which layers were read."""

    def __init__(self, stored):
        self.stored, self.read = stored, []
        self.masks, self.has_bboxes = stored.masks, stored.has_bboxes

    def crop_bbox(self, bbox, layers=None):
        self.read.append(None if layers is None else list(layers))
        return self.stored.crop_bbox(bbox, layers)


def test_bbox_path_reads_only_layers_of_candidate_masks(tmp_path):
    layers = np.zeros((3, *SHAPE), dtype=np.uint16)
    layers[0, :12] = 1              # top half
    layers[1, 16:20, 20:24, 20:24] = 1  # far corner
    layers[2, 18:22, 2:6, 2:6] = 1
    stack = MaskStack.from_layers(list(layers), ["top", "corner", "other"])
    save_mask_stack(tmp_path, "c", stack, {})
    spy = ReadSpy(open_mask_stack(tmp_path, "c"))
    window = np.array([[0, 10], [0, 10], [0, 10]])
    assert draw_present_masks(spy, window, MIN_VOXELS, 12, np.random.default_rng(0)) == [stack.masks[0]]
    assert spy.read == [[0]]  # the other layers' boxes miss the window: never decompressed

    spy.has_bboxes = False  # as with an old index: every layer of the window is read at once
    assert draw_present_masks(spy, window, MIN_VOXELS, 12, np.random.default_rng(0)) == [stack.masks[0]]
    assert spy.read[-1] is None


def test_draws_are_uniform_over_present_masks(stacks):
    _, boxed, _ = stacks
    window = np.array([[0, 24], [0, 28], [0, 32]])
    present = present_masks(boxed, window, MIN_VOXELS)
    rng = np.random.default_rng(3)
    counts = np.zeros(len(boxed.masks))
    for _ in range(3000):
        for info in draw_present_masks(boxed, window, MIN_VOXELS, 4, rng):
            counts[boxed.masks.index(info)] += 1
    expected = 3000 * 4 / len(present)
    assert np.all(counts[present] > 0.75 * expected) and np.all(counts[present] < 1.25 * expected)
    assert counts.sum() == counts[present].sum()


def test_channel_plan_puts_fov_among_the_drawn_and_padding_after():
    rng = np.random.default_rng(4)
    seen = set()
    for _ in range(300):
        plan = plan_channels(3, 13, True, rng)
        used = [*plan.mask_channels, plan.fov_channel]
        assert sorted(used) == [0, 1, 2, 3] and plan.padding_channels == tuple(range(4, 13))
        seen.add(plan.fov_channel)
    assert seen == {0, 1, 2, 3}
    plan = plan_channels(13, 13, False, rng)
    assert plan.mask_channels == tuple(range(13)) and plan.fov_channel is None and plan.padding_channels == ()
    with pytest.raises(ValueError, match="do not fit"):
        plan_channels(13, 13, True, rng)


def test_assembled_tasks_padding_fov_and_validity():
    patch = (6, 6, 6)
    reference = np.zeros((3, *patch), dtype=bool)
    query = np.zeros((3, *patch), dtype=bool)
    reference[0, :3, :3, :3] = True     # 27 voxels: just enough
    reference[1, :2, :3, :4] = True     # 24 voxels: shrank below the minimum during augmentation
    reference[2, 1:5, 1:5, 1:5] = True  # present in the reference ...
    query[0, 3:, 3:, 3:] = True         # ... but mask 2 is empty in the query: still a valid task
    plan = plan_channels(3, 6, True, np.random.default_rng(5))
    ref_out, query_out, valid = assemble_tasks(reference, query, plan, MIN_VOXELS)
    assert ref_out.shape == query_out.shape == (6, *patch) and valid.shape == (6,)
    channels = plan.mask_channels
    assert valid[list(channels)].tolist() == [True, False, True]
    assert np.array_equal(ref_out[list(channels)], reference) and np.array_equal(query_out[list(channels)], query)
    assert valid[plan.fov_channel] and ref_out[plan.fov_channel].all() and query_out[plan.fov_channel].all()
    for c in plan.padding_channels:
        assert not valid[c] and not ref_out[c].any() and not query_out[c].any()


def test_no_drawn_mask_leaves_only_the_fov_task():
    none = np.zeros((0, 4, 4), dtype=bool)
    plan = plan_channels(0, 5, True, np.random.default_rng(6))
    ref_out, query_out, valid = assemble_tasks(none, none, plan, MIN_VOXELS)
    assert plan.fov_channel == 0 and valid.tolist() == [True, False, False, False, False]
    assert ref_out[0].all() and not ref_out[1:].any() and not query_out[1:].any()


def test_size_bias_draws_large_masks_first_more_often_and_zero_bias_is_uniform():
    from nnunet_mass.masks.stack import MaskInfo
    from nnunet_mass.pretext.selection import draw_order

    masks = [MaskInfo(0, 1, 10, "small"), MaskInfo(0, 2, 1000, "large")]
    rng = np.random.default_rng(0)
    first_large = [draw_order(masks, bias, rng)[0] == 1 for bias in [0.0] * 2000]
    assert 0.45 < np.mean(first_large) < 0.55
    first_large = [draw_order(masks, 0.5, rng)[0] == 1 for _ in range(2000)]
    assert 0.88 < np.mean(first_large) < 0.93  # weights 10**0.5 : 1000**0.5 -> P(large first) = 10 / 11
    assert sorted(draw_order(masks, 0.5, rng)) == [0, 1]
