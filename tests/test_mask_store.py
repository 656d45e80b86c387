"""Mask stacks on disk: round trip, windowed reads, expansion, atomic writes, clear errors."""
import json
import os
import pickle
from dataclasses import dataclass

import numpy as np
import pytest

from nnunet_mass.masks import store
from nnunet_mass.masks.stack import MaskInfo, MaskStack
from nnunet_mass.masks.store import (MaskFormatError, chunking, expand, finished_cases, is_finished, mask_folder,
                                     open_mask_stack, save_mask_stack)

SHAPE = (20, 24, 28)  # (z, y, x)


def example_stack(seed: int = 0, shape=SHAPE) -> MaskStack:
    """Two layers: blocks labelled 1..8 (a partition) and a few random-sized boxes."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    blocks = 1 + (z >= shape[0] // 2) * 4 + (y >= shape[1] // 2) * 2 + (x >= shape[2] // 2)
    boxes = np.zeros(shape, dtype=np.uint16)
    for label in (3, 700, 65535):
        lo = rng.integers(0, np.array(shape) // 2)
        hi = lo + rng.integers(2, np.array(shape) // 2)
        boxes[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = label
    return MaskStack.from_layers([blocks, boxes], ["blocks", "boxes"])


@dataclass
class FakeSettings:
    scales_mm: tuple = (10.0, 20.0)


def test_mask_folder_is_a_sibling_of_nnunet_data(tmp_path):
    folder = mask_folder(tmp_path / "Dataset101_X", "nnUNetPlans_3d_fullres")
    assert folder == tmp_path / "Dataset101_X" / "nnUNetPlans_3d_fullres_mass_masks"


def test_round_trip(tmp_path):
    stack = example_stack()
    metadata = {"generator": {"name": "fake", "settings": FakeSettings()}, "data_shape": [1, *SHAPE],
                "spacing_zyx": np.array([2.5, 2.0, 2.0]), "count": np.int64(3)}
    assert not is_finished(tmp_path, "case_000")
    save_mask_stack(tmp_path, "case_000", stack, metadata)
    assert is_finished(tmp_path, "case_000") and finished_cases(tmp_path) == ["case_000"]

    stored = open_mask_stack(tmp_path, "case_000", data_shape=(1, *SHAPE))
    assert stored.shape == (2, *SHAPE) and len(stored) == len(stack)
    assert stored.masks == stack.masks
    assert stored.metadata["generator"]["settings"] == {"scales_mm": [10.0, 20.0]}
    assert stored.metadata["spacing_zyx"] == [2.5, 2.0, 2.0] and stored.metadata["count"] == 3
    loaded = stored.load()
    assert loaded.layers.dtype == np.uint16 and np.array_equal(loaded.layers, stack.layers)
    index = json.loads((tmp_path / "case_000.json").read_text())
    assert index["format_version"] == store.FORMAT_VERSION and index["shape"] == [2, *SHAPE]


def test_crop_equals_slice_of_full_array(tmp_path):
    stack = example_stack(1)
    save_mask_stack(tmp_path, "c", stack, {}, patch_size=(8, 8, 8))
    stored = open_mask_stack(tmp_path, "c")
    for window in [(slice(2, 11), slice(5, 20), slice(0, 28)), (slice(None), slice(3, 4)), (slice(-5, None),),
                   (), (slice(0, 100), slice(10, 10))]:
        crop = stored.crop(window)
        assert crop.dtype == np.uint16
        assert np.array_equal(crop, stack.layers[(slice(None), *window)]), window
    with pytest.raises(ValueError, match="step"):
        stored.crop((slice(0, 10, 2),))


def test_crop_bbox_pads_outside_with_zero(tmp_path):
    stack = example_stack(2)
    save_mask_stack(tmp_path, "c", stack, {})
    stored = open_mask_stack(tmp_path, "c")
    bbox = [[-3, 9], [20, 30], [4, 12]]
    padded = np.pad(stack.layers, [(0, 0), (3, 0), (0, 6), (0, 0)])
    assert np.array_equal(stored.crop_bbox(bbox), padded[:, 0:12, 20:30, 4:12])
    assert not stored.crop_bbox([[30, 40], [0, 4], [0, 4]]).any()  # entirely outside


def test_expand_selected_masks(tmp_path):
    stack = example_stack(3)
    save_mask_stack(tmp_path, "c", stack, {})
    stored = open_mask_stack(tmp_path, "c")
    window = (slice(4, 16), slice(0, 20), slice(6, 26))
    chosen = [stored.masks[i] for i in (0, len(stored.masks) - 1, 5)]
    masks = stored.expand(stored.crop(window), chosen)
    assert masks.dtype == bool and masks.shape == (3, 12, 20, 20)
    for k, info in enumerate(chosen):
        assert np.array_equal(masks[k], stack.mask(stack.masks.index(info))[window])
    assert expand(stored.crop(window), []).shape == (0, 12, 20, 20)
    with pytest.raises(IndexError, match="layer 5"):
        expand(stored.crop(window), [MaskInfo(5, 1, 1, "x")])


def test_chunks_follow_the_patch_size(tmp_path):
    shape = (2, 80, 96, 96)
    blocks, chunks = chunking(shape, (32, 32, 32))
    assert chunks[0] == 1 and blocks[0] == 1
    assert all(c < s for c, s in zip(chunks[1:], shape[1:])), chunks
    stack = MaskStack(np.zeros(shape, dtype=np.uint16), [MaskInfo(0, 1, 0, "empty")])
    save_mask_stack(tmp_path, "big", stack, {}, patch_size=(32, 32, 32))
    assert tuple(open_mask_stack(tmp_path, "big").array.chunks) == chunks


def test_crash_between_the_two_files_leaves_no_finished_case(tmp_path, monkeypatch):
    stack = example_stack(4)
    real_replace = os.replace

    def crash_on_index(src, dst):
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt("killed")  # as if the process died right here
        real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", crash_on_index)
    with pytest.raises(KeyboardInterrupt):
        save_mask_stack(tmp_path, "c", stack, {})
    assert (tmp_path / "c.b2nd").is_file() and not is_finished(tmp_path, "c")
    with pytest.raises(FileNotFoundError, match="nnUNetv2_mass_generate_masks"):
        open_mask_stack(tmp_path, "c")

    monkeypatch.setattr(store.os, "replace", real_replace)
    save_mask_stack(tmp_path, "c", stack, {})
    assert is_finished(tmp_path, "c")
    assert np.array_equal(open_mask_stack(tmp_path, "c").load().layers, stack.layers)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.b2nd", "c.json"]


def test_crash_while_overwriting_never_pairs_old_index_with_new_array(tmp_path, monkeypatch):
    save_mask_stack(tmp_path, "c", example_stack(5), {"run": 1})
    real_replace = os.replace

    def crash_on_index(src, dst):
        if str(dst).endswith(".json"):
            raise KeyboardInterrupt("killed")
        real_replace(src, dst)

    monkeypatch.setattr(store.os, "replace", crash_on_index)
    with pytest.raises(KeyboardInterrupt):
        save_mask_stack(tmp_path, "c", example_stack(6), {"run": 2})
    assert not is_finished(tmp_path, "c")


def test_leftovers_of_a_killed_write_are_ignored_and_cleaned(tmp_path):
    (tmp_path / ".c.0123abcd.b2nd.partial").write_bytes(b"half a file")
    (tmp_path / ".c.0123abcd.json.partial").write_text("{")
    assert not is_finished(tmp_path, "c") and finished_cases(tmp_path) == []
    save_mask_stack(tmp_path, "c", example_stack(), {})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.b2nd", "c.json"]


def test_errors_name_the_problem_and_the_fix(tmp_path):
    folder = mask_folder(tmp_path / "Dataset101_X", "nnUNetPlans_3d_fullres")
    with pytest.raises(FileNotFoundError, match="nnUNetv2_mass_generate_masks -d Dataset101_X"):
        open_mask_stack(folder, "c")

    save_mask_stack(folder, "c", example_stack(), {"data_shape": [1, *SHAPE]})
    with pytest.raises(MaskFormatError, match=r"preprocessed data has \[20, 24, 30\].*--overwrite"):
        open_mask_stack(folder, "c", data_shape=(1, 20, 24, 30))

    index = json.loads((folder / "c.json").read_text())
    (folder / "c.json").write_text(json.dumps({**index, "format_version": 99}))
    with pytest.raises(MaskFormatError, match="version 99"):
        open_mask_stack(folder, "c")

    (folder / "c.json").write_text(json.dumps({**index, "shape": [2, 20, 24, 29]}))
    with pytest.raises(MaskFormatError, match="damaged"):
        open_mask_stack(folder, "c")

    with pytest.raises(ValueError, match="empty"):
        save_mask_stack(folder, "d", MaskStack(np.zeros((0, *SHAPE), dtype=np.uint16)), {})
    with pytest.raises(ValueError, match="does not fit"):
        save_mask_stack(folder, "d", MaskStack(np.zeros((1, *SHAPE), dtype=np.uint16), [MaskInfo(1, 1, 0, "x")]), {})


def test_stored_stack_pickles_for_dataloader_workers(tmp_path):
    stack = example_stack(7)
    save_mask_stack(tmp_path, "c", stack, {})
    stored = open_mask_stack(tmp_path, "c")
    stored.crop((slice(0, 4),))  # the file is open now
    clone = pickle.loads(pickle.dumps(stored))
    assert np.array_equal(clone.crop((slice(3, 9),)), stack.layers[:, 3:9])


def test_bboxes_are_computed_once_on_save_and_read_back(tmp_path):
    stack = example_stack(8)
    empty_label = MaskInfo(1, 4321, 0, "empty")  # listed but absent from the layer
    stack = MaskStack(stack.layers, [*stack.masks, empty_label])
    save_mask_stack(tmp_path, "c", stack, {})
    stored = open_mask_stack(tmp_path, "c")
    assert stored.has_bboxes
    for info in stored.masks[:-1]:
        where = np.argwhere(stack.layers[info.layer] == info.label)
        assert info.bbox == tuple((int(lo), int(hi) + 1) for lo, hi in zip(where.min(0), where.max(0)))
    assert stored.masks[-1].bbox == ((0, 0), (0, 0), (0, 0))
    index = json.loads((tmp_path / "c.json").read_text())
    assert index["masks"][0]["bbox"] == [list(b) for b in stored.masks[0].bbox]
    assert stored.masks == stack.masks  # the box is derived data: equality ignores it


def test_index_without_bboxes_still_loads(tmp_path):
    save_mask_stack(tmp_path, "c", example_stack(9), {})
    index = json.loads((tmp_path / "c.json").read_text())
    for entry in index["masks"]:
        del entry["bbox"]  # as written before boxes were stored
    (tmp_path / "c.json").write_text(json.dumps(index))
    stored = open_mask_stack(tmp_path, "c")
    assert not stored.has_bboxes and all(m.bbox is None for m in stored.masks)
    assert np.array_equal(stored.load().layers, example_stack(9).layers)


def test_crop_and_read_masks_of_chosen_layers_only(tmp_path):
    stack = example_stack(10)
    save_mask_stack(tmp_path, "c", stack, {})
    stored = open_mask_stack(tmp_path, "c")
    window = (slice(2, 12), slice(4, 20), slice(1, 27))
    assert np.array_equal(stored.crop(window, layers=[1, 0]), stack.layers[[1, 0]][(slice(None), *window)])
    assert stored.crop(window, layers=[]).shape == (0, 10, 16, 26)
    with pytest.raises(IndexError, match="out of range"):
        stored.crop(window, layers=[2])
    bbox = [[-2, 8], [10, 30], [5, 9]]
    chosen = [stored.masks[-1], stored.masks[0]]  # layers 1 and 0
    padded = np.pad(stack.layers, [(0, 0), (2, 0), (0, 6), (0, 0)])[:, 0:10, 10:30, 5:9]
    expected = np.stack([padded[info.layer] == info.label for info in chosen])
    assert np.array_equal(stored.read_masks(bbox, chosen), expected)
