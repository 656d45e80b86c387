"""SAM2 mask backend: the pipeline with fake SAM2 models (SAM2 itself is not installed here)."""
import contextlib
import os
import pickle
import sys
import types
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from nnunet_mass.masks import sam2_backend
from nnunet_mass.masks.sam2_backend import (Crop, Sam2Models, Sam2Settings, clean_mask, config_for_checkpoint,
                                            crop_iou, intensity_window, load_sam2_models, models_for, pack_layers,
                                            propose_masks_sam2, seed_slices, select_seed_masks, stack_from_crops,
                                            suppress_near_duplicates, to_uint8_rgb)
from nnunet_mass.masks.stack import MaskStack

SPACING = (2.5, 1.5, 1.5)  # (z, y, x) mm: anisotropic, 12 slices per 30 mm
SHAPE = (40, 48, 48)
AIR, TISSUE, TUBE, SPHERE_A, SPHERE_B = 0, 1, 2, 3, 4
VALUES = {AIR: -2.0, TISSUE: 0.3, TUBE: 1.0, SPHERE_A: 2.0, SPHERE_B: 3.0}


def phantom():
    """(image (1, z, y, x), truth labels (z, y, x)): a body cylinder holding a tube along z
    and two spheres centred on seed slices 14 and 26."""
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING)), indexing="ij")
    truth = np.zeros(SHAPE, dtype=np.int32)
    truth[(y - 36) ** 2 + (x - 36) ** 2 <= 30 ** 2] = TISSUE
    truth[(y - 36) ** 2 + (x - 18) ** 2 <= 9 ** 2] = TUBE
    truth[(z - 35) ** 2 + (y - 21) ** 2 + (x - 48) ** 2 <= 9 ** 2] = SPHERE_A
    truth[(z - 65) ** 2 + (y - 51) ** 2 + (x - 48) ** 2 <= 9 ** 2] = SPHERE_B
    image = np.vectorize(VALUES.get, otypes=[np.float32])(truth)
    return image[None], truth


class FakeVideo:
    """Propagation by the truth: a seed mask grows into the structure(s) under it, plus a
    spurious blob in a corner of the air (which the clean-up must remove)."""

    def __init__(self, truth, calls):
        self.truth, self.calls = truth, calls

    def propagate(self, seed_index, seed_masks):
        self.calls.append((seed_index, len(seed_masks)))
        out = []
        for mask in seed_masks:
            labels = np.unique(self.truth[seed_index][mask])
            volume = np.isin(self.truth, labels[labels > 0])
            volume[:3, :3, :3] = True
            out.append(volume)
        return out


class FakeModels:
    """Automatic masks = connected regions of equal grey level, plus the whole body, a
    duplicate, a tiny mask and the air (the last two must be filtered out)."""

    def __init__(self, truth):
        self.truth, self.calls, self.volumes = truth, [], []

    def automatic_masks(self, rgb_slice):
        grey = rgb_slice[..., 0]
        air = grey == grey[0, 0]
        masks = []
        for level in np.unique(grey[~air]):
            pieces, count = ndimage.label(grey == level)
            masks += [pieces == i for i in range(1, count + 1)]
        tiny = np.zeros_like(air)
        tiny[24, 24:26] = True
        return masks + [~air, masks[0].copy(), tiny, air]

    @contextlib.contextmanager
    def open_volume(self, volume_rgb):
        self.volumes.append(volume_rgb)
        yield FakeVideo(self.truth, self.calls)


def box_crop(box, shape=SHAPE) -> Crop:
    mask = np.zeros(shape, dtype=bool)
    mask[box] = True
    return Crop(tuple(box), mask[box].copy(), int(mask.sum()))


def as_volume(crop: Crop, shape=SHAPE) -> np.ndarray:
    mask = np.zeros(shape, dtype=bool)
    mask[crop.box] = crop.voxels
    return mask


# ---------------------------------------------------------------- pure steps

def test_seed_slices_follow_the_physical_interval_inside_the_body():
    body = np.zeros((60, 4, 4), dtype=bool)
    body[4:41] = True  # 36 slice steps: 90 mm at 2.5 mm, 180 mm at 5 mm
    assert seed_slices(body, 2.5, 30) == [4, 16, 28, 40]
    assert seed_slices(body, 5.0, 30) == [4, 10, 16, 22, 28, 34, 40]
    seeds = seed_slices(body, 4.0, 30)  # 7.5 slices per interval: within half a slice of 30 mm
    assert all(abs((b - a) * 4.0 - 30) <= 4.0 for a, b in zip(seeds, seeds[1:]))
    assert 4 <= seeds[0] and seeds[-1] <= 40 and len(seeds) == 5
    thin = np.zeros((60, 4, 4), dtype=bool)
    thin[20:23] = True  # 5 mm of body: one seed, in its middle
    assert seed_slices(thin, 2.5, 30) == [21]
    assert seed_slices(np.zeros((5, 4, 4), dtype=bool), 2.5, 30) == []
    with pytest.raises(ValueError, match="slice_interval_mm"):
        seed_slices(body, 2.5, 0)


def test_windowing_uses_body_percentiles_and_gives_grey_rgb():
    channel = np.full((4, 8, 8), -5.0, dtype=np.float32)  # air far below the body
    body = np.zeros(channel.shape, dtype=bool)
    body[:, 2:6, 2:6] = True
    channel[body] = np.linspace(0, 1, body.sum())
    low, high = intensity_window(channel, body, (0, 100))
    assert (low, high) == (0.0, 1.0)
    rgb = to_uint8_rgb(channel, low, high)
    assert rgb.shape == (4, 8, 8, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0, 0].tolist() == [0, 0, 0] and rgb[body][:, 0].max() == 255
    assert np.array_equal(rgb[..., 0], rgb[..., 2])


def test_seed_masks_drop_tiny_and_outside_masks():
    body = np.zeros((10, 10), dtype=bool)
    body[2:8, 2:8] = True
    inside, outside, tiny = (np.zeros_like(body) for _ in range(3))
    inside[3:6, 3:6] = True
    outside[0:2, :] = True
    tiny[4, 4] = True
    kept = select_seed_masks([inside, outside, tiny, inside], body, 4, 0.5, max_count=1)
    assert len(kept) == 1 and np.array_equal(kept[0], inside)


def test_clean_up_keeps_the_largest_component_touching_the_seed_slice():
    mask = np.zeros((20, 16, 16), dtype=bool)
    mask[4:10, 2:6, 2:6] = True  # touches seed slice 6: 96 voxels
    mask[6, 10:12, 10:12] = True  # touches it too, smaller
    mask[12:20, 8:16, 8:16] = True  # a spurious larger blob away from the seed slice
    crop = clean_mask(mask, 6, min_voxels=10)
    expected = np.zeros_like(mask)
    expected[4:10, 2:6, 2:6] = True
    assert crop.size == 96 and np.array_equal(as_volume(crop, mask.shape), expected)
    assert crop.box == (slice(4, 10), slice(2, 6), slice(2, 6))
    assert clean_mask(mask, 2, min_voxels=10) is None  # nothing on the seed slice
    assert clean_mask(mask, 6, min_voxels=97) is None  # too small

    hollow = np.zeros((9, 9, 9), dtype=bool)
    hollow[1:8, 1:8, 1:8] = True
    hollow[3:6, 3:6, 3:6] = False
    assert clean_mask(hollow, 4, 1).size == 7 ** 3 - 27
    assert clean_mask(hollow, 4, 1, fill_holes=True).size == 7 ** 3


def test_nms_removes_near_duplicates_only():
    a = box_crop((slice(0, 10), slice(0, 10), slice(0, 10)))
    near = box_crop((slice(0, 10), slice(0, 10), slice(0, 10)))
    near.voxels[0, 0, :3] = False  # IoU 0.997
    near = Crop(near.box, near.voxels, int(near.voxels.sum()))
    similar = box_crop((slice(0, 9), slice(0, 10), slice(0, 10)))  # IoU 0.9
    apart = box_crop((slice(20, 30), slice(0, 10), slice(0, 10)))
    assert crop_iou(a, near) > 0.95 and crop_iou(a, similar) == pytest.approx(0.9) and crop_iou(a, apart) == 0
    kept = suppress_near_duplicates([a, near, similar, apart], 0.95)
    assert kept == [a, similar, apart]


def test_packing_keeps_masks_exact_and_overlaps_in_other_layers():
    crops = [box_crop((slice(0, 10), slice(0, 10), slice(0, 10))),  # 1000 voxels
             box_crop((slice(5, 14), slice(5, 15), slice(5, 15))),  # 900, overlaps the first
             box_crop((slice(20, 28), slice(20, 30), slice(20, 30))),  # 800, overlaps neither
             box_crop((slice(6, 8), slice(6, 8), slice(6, 8)))]  # 8, inside both of the first two
    layers = pack_layers(crops, SHAPE)
    assert len(layers) == 3 and all(layer.dtype == np.uint16 for layer in layers)
    stack = stack_from_crops(crops, SHAPE)
    assert isinstance(stack, MaskStack) and len(stack) == 4 and {m.source for m in stack.masks} == {"sam2"}
    got = sorted((stack.mask(i) for i in range(len(stack))), key=lambda m: m.tobytes())
    want = sorted((as_volume(c) for c in crops), key=lambda m: m.tobytes())
    assert all(np.array_equal(g, w) for g, w in zip(got, want))
    assert {info.voxels: info.layer for info in stack.masks} == {1000: 0, 900: 1, 800: 0, 8: 2}
    assert stack_from_crops([], SHAPE).layers.shape == (0, *SHAPE)


# ---------------------------------------------------------------- whole pipeline

def best_iou(stack: MaskStack, target: np.ndarray) -> float:
    ious = []
    for i in range(len(stack)):
        mask = stack.mask(i)
        ious.append(np.count_nonzero(mask & target) / np.count_nonzero(mask | target))
    return max(ious)


def test_end_to_end_with_a_fake_sam2(monkeypatch, tmp_path):
    image, truth = phantom()
    fake = FakeModels(truth)
    loads = []
    monkeypatch.setattr(sam2_backend, "_MODEL_CACHE", {})
    monkeypatch.setattr(sam2_backend, "load_sam2_models", lambda settings: loads.append(settings) or fake)
    settings = Sam2Settings(checkpoint=str(tmp_path / "sam2.1_hiera_tiny.pt"))

    stack = propose_masks_sam2(image, SPACING, settings)
    assert isinstance(stack, MaskStack) and stack.layers.shape[1:] == SHAPE and stack.layers.dtype == np.uint16
    assert [seed for seed, _ in fake.calls] == [2, 14, 26, 38] and len(loads) == 1
    assert fake.volumes[0].shape == (*SHAPE, 3) and fake.volumes[0].dtype == np.uint8
    structures = [truth == TISSUE, truth == TUBE, truth == SPHERE_A, truth == SPHERE_B, truth > AIR]
    assert len(stack) == len(structures)  # duplicates across seeds and within a slice removed
    assert all(best_iou(stack, s) >= 0.95 for s in structures)
    assert not any(stack.mask(i)[0, 0, 0] for i in range(len(stack)))  # spurious blob cleaned away
    assert stack.layers.shape[0] >= 2 and {m.source for m in stack.masks} == {"sam2"}

    again = propose_masks_sam2(image, SPACING, settings)  # models loaded once per process
    assert len(loads) == 1 and np.array_equal(again.layers, stack.layers)
    capped = propose_masks_sam2(image, SPACING, Sam2Settings(settings.checkpoint, max_proposals=2), models=fake)
    assert sorted(m.voxels for m in capped.masks) == sorted(m.voxels for m in stack.masks)[-2:]


def test_settings_are_required_and_picklable():
    image, _ = phantom()
    with pytest.raises(ValueError, match="checkpoint"):
        propose_masks_sam2(image, SPACING, None)
    settings = Sam2Settings(checkpoint="/x/sam2.1_hiera_large.pt", slice_interval_mm=20)
    function, restored = pickle.loads(pickle.dumps((propose_masks_sam2, settings)))
    assert function is propose_masks_sam2 and restored == settings


# ---------------------------------------------------------------- the real adapter, on fake SAM2 objects

class FakePredictor:
    """SAM2VideoPredictor's calls as used by Sam2Video: a seed mask is 'tracked' 2 slices each way."""

    def init_state(self, folder, offload_video_to_cpu=False, offload_state_to_cpu=False):
        from PIL import Image

        names = sorted(os.listdir(folder), key=lambda n: int(n.split(".")[0]))
        frames = [np.asarray(Image.open(Path(folder) / n)) for n in names]
        self.folder = folder
        return {"frames": frames, "masks": {}}

    def reset_state(self, state):
        state["masks"].clear()

    def add_new_mask(self, state, frame_idx, obj_id, mask):
        state["masks"][obj_id] = (frame_idx, mask)

    def propagate_in_video(self, state, start_frame_idx, reverse=False):
        import torch

        order = range(start_frame_idx, -1, -1) if reverse else range(start_frame_idx, len(state["frames"]))
        ids = list(state["masks"])
        for frame in order:
            logits = [np.where(mask & (abs(frame - seed) <= 2), 5.0, -5.0) for seed, mask in state["masks"].values()]
            yield frame, ids, torch.tensor(np.stack(logits))[:, None]


def test_sam2_models_adapter_calls_the_sam2_api_as_documented():
    generator = types.SimpleNamespace(generate=lambda rgb: [
        {"segmentation": rgb[..., 0] > 100, "predicted_iou": 0.7},
        {"segmentation": rgb[..., 0] > 200, "predicted_iou": 0.9}])
    predictor = FakePredictor()
    models = Sam2Models(generator, predictor, "cpu")
    volume = np.zeros((10, 16, 16, 3), dtype=np.uint8)
    volume[:, 4:12, 4:12] = 150
    volume[:, 6:10, 6:10] = 250

    masks = models.automatic_masks(volume[5])
    assert [int(m.sum()) for m in masks] == [16, 64]  # best predicted IoU first
    with models.open_volume(volume) as video:
        assert len(os.listdir(predictor.folder)) == 10
        tracked = video.propagate(5, masks)
    assert not os.path.exists(predictor.folder)  # the JPEG frames were private and are gone
    assert len(tracked) == 2 and tracked[0].shape == (10, 16, 16) and tracked[0].dtype == bool
    expected = np.zeros((10, 16, 16), dtype=bool)
    expected[3:8] = masks[0]
    assert np.array_equal(tracked[0], expected)


# ---------------------------------------------------------------- errors that name the fix

def test_missing_checkpoint_names_the_path(tmp_path):
    missing = tmp_path / "sam2.1_hiera_large.pt"
    with pytest.raises(FileNotFoundError, match="does not exist") as error:
        load_sam2_models(Sam2Settings(checkpoint=str(missing)))
    assert str(missing) in str(error.value) and "facebookresearch/sam2" in str(error.value)
    with pytest.raises(FileNotFoundError, match="no SAM2 checkpoint"):
        sam2_backend.check_checkpoint(None)


def test_missing_sam2_package_gives_the_install_command(tmp_path, monkeypatch):
    checkpoint = tmp_path / "sam2.1_hiera_large.pt"
    checkpoint.write_bytes(b"not really a checkpoint")
    monkeypatch.setitem(sys.modules, "sam2", None)  # `import sam2` fails
    with pytest.raises(ImportError, match=r'pip install "nnunet-mass\[sam2\]"') as error:
        load_sam2_models(Sam2Settings(checkpoint=str(checkpoint)))
    assert "CUDA" in str(error.value)
    monkeypatch.setattr(sam2_backend, "_MODEL_CACHE", {})
    with pytest.raises(ImportError):
        models_for(Sam2Settings(checkpoint=str(checkpoint)))


def test_config_follows_official_checkpoint_names():
    assert config_for_checkpoint("/w/sam2.1_hiera_large.pt") == "configs/sam2.1/sam2.1_hiera_l.yaml"
    assert config_for_checkpoint("sam2.1_hiera_base_plus.pt") == "configs/sam2.1/sam2.1_hiera_b+.yaml"
    assert config_for_checkpoint("sam2_hiera_tiny.pt") == "configs/sam2/sam2_hiera_t.yaml"
    with pytest.raises(ValueError, match="--sam2-config"):
        config_for_checkpoint("my_model.pt")


# ---------------------------------------------------------------- command line

def run_cli(argv):
    from nnunet_mass.cli.generate_masks import main

    main(argv)


def test_cli_sam2_without_checkpoint_stops_before_any_work(capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["-d", "1", "--backend", "sam2"])
    assert exit_info.value.code == 2 and "--sam2-checkpoint" in capsys.readouterr().err


def test_cli_sam2_missing_checkpoint_or_package(tmp_path, monkeypatch, capsys):
    missing = tmp_path / "sam2.1_hiera_small.pt"
    with pytest.raises(SystemExit):
        run_cli(["-d", "1", "--backend", "sam2", "--sam2-checkpoint", str(missing)])
    assert str(missing) in capsys.readouterr().err
    missing.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "sam2", None)
    with pytest.raises(SystemExit):
        run_cli(["-d", "1", "--backend", "sam2", "--sam2-checkpoint", str(missing)])
    assert "nnunet-mass[sam2]" in capsys.readouterr().err


def test_cli_sam2_passes_generator_and_settings(tmp_path, monkeypatch):
    from nnunet_mass.masks import dataset_masks

    checkpoint = tmp_path / "sam2.1_hiera_small.pt"
    checkpoint.write_bytes(b"x")
    monkeypatch.setitem(sys.modules, "sam2", types.ModuleType("sam2"))
    seen = {}

    def fake_generate(*args, **kwargs):
        seen.update(kwargs, args=args)
        return types.SimpleNamespace(ok=True)

    monkeypatch.setattr(dataset_masks, "generate_dataset_masks", fake_generate)
    run_cli(["-d", "7", "--backend", "sam2", "--sam2-checkpoint", str(checkpoint), "--sam2-slice-interval-mm",
             "20", "--sam2-device", "cpu"])
    assert seen["generator"] is propose_masks_sam2 and seen["args"][0] == "7"
    assert seen["settings"] == Sam2Settings(checkpoint=str(checkpoint), slice_interval_mm=20.0, device="cpu")
    seen.clear()
    run_cli(["-d", "7"])  # the default backend is unchanged
    assert seen["generator"] is None and not isinstance(seen["settings"], Sam2Settings)
