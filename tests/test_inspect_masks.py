"""nnUNetv2_mass_inspect_masks: statistics, coverage and PNG overlays of stored mask proposals."""
import json
import shutil

import numpy as np
import pytest

from helpers import copy_dataset, preprocessed_phantoms
from nnunet_mass.masks.inspect import (MaskQAError, case_statistics, inspect_dataset_masks, render_overlays,
                                       slice_positions, summarize_cases, view_geometry)
from nnunet_mass.masks.stack import MaskInfo, MaskStack
from nnunet_mass.masks.store import open_mask_stack

DATASET_ID = 103
DATASET = "Dataset103_InspectPhantoms"
CASES = ["phantom_000", "phantom_001"]


def split_generator(image, spacing_zyx, settings=None):
    """Fast stand-in for the classical generator: image halves along x, and above/below the mean."""
    channel = image[0]
    halves = np.ones(channel.shape, dtype=np.uint16)
    halves[..., channel.shape[2] // 2:] = 2
    bright = np.where(channel > channel.mean(), 1, 2).astype(np.uint16)
    return MaskStack.from_layers([halves, bright], ["halves", "bright"])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """A 2-case phantom dataset preprocessed by nnU-Net (Python API, this process), with masks."""
    from nnunet_mass.masks.dataset_masks import generate_dataset_masks

    def make_masks():
        assert generate_dataset_masks(DATASET_ID, generator=split_generator).ok

    return preprocessed_phantoms(tmp_path_factory.mktemp("pristine"), DATASET_ID, DATASET.split("_", 1)[1],
                                 num_cases=2, seed=5, shape=(24, 32, 32), then=make_masks)


@pytest.fixture
def dataset(pristine, nnunet_env):
    """A private copy of the pristine dataset (masks included) in this test's nnU-Net folders."""
    return copy_dataset(pristine, nnunet_env, DATASET)


def hand_built_stack() -> MaskStack:
    """Two layers on a (4, 10, 10) grid: masks of 100, 200 and 50 voxels, plus an unlisted value."""
    layers = np.zeros((2, 4, 10, 10), dtype=np.uint16)
    layers[0, 0] = 1          # 100 voxels, source a
    layers[0, 1:3] = 2        # 200 voxels, source a
    layers[1, 3, :5] = 5      # 50 voxels, source b
    layers[1, 3, 5:] = 7      # not in the index: no mask, must not count as covered
    masks = [MaskInfo(0, 1, 100, "a"), MaskInfo(0, 2, 200, "a"), MaskInfo(1, 5, 50, "b")]
    return MaskStack(layers, masks)


def test_statistics_of_a_hand_built_stack():
    body = np.ones((4, 10, 10), dtype=bool)
    body[0, :, :2] = False  # 20 covered voxels outside the body
    stats = case_statistics(hand_built_stack(), body, (2.0, 1.0, 0.5))  # 1 voxel = 1 mm^3 = 0.001 ml

    assert stats["num_masks"] == 3 and stats["num_layers"] == 2
    assert stats["sources"] == {"a": 2, "b": 1}
    assert stats["voxel_ml"] == pytest.approx(0.001)
    expected = np.percentile([100, 200, 50], [5, 25, 50, 75, 95])
    assert [stats["size_voxels"][f"p{p}"] for p in (5, 25, 50, 75, 95)] == pytest.approx(expected)
    assert [stats["size_ml"][f"p{p}"] for p in (5, 25, 50, 75, 95)] == pytest.approx(expected * 0.001)
    assert stats["size_ml"]["p50"] == pytest.approx(0.1)
    assert stats["body_voxels"] == 380 and stats["body_ml"] == pytest.approx(0.38)
    assert stats["body_covered"] == pytest.approx(330 / 380)  # z=3, x>=5 is body but only value 7 (unlisted)
    assert stats["outside_body"] == pytest.approx(20 / 350)


def test_summary_is_mean_and_median_over_cases():
    stack, body = hand_built_stack(), np.ones((4, 10, 10), dtype=bool)
    one = case_statistics(stack, body, (1.0, 1.0, 1.0))
    two = case_statistics(MaskStack(stack.layers[:1], stack.masks[:2]), body, (1.0, 1.0, 1.0))
    summary = summarize_cases({"c1": one, "c2": two, "c3": one})
    assert summary["num_cases"] == 3 and summary["total_masks"] == 8
    assert summary["num_masks"]["mean"] == pytest.approx(8 / 3) and summary["num_masks"]["median"] == 3
    assert summary["body_covered"]["median"] == pytest.approx(0.875)
    assert summary["body_covered"]["min"] == pytest.approx(0.75)
    assert summary["masks_per_source"]["b"] == {"mean": pytest.approx(2 / 3), "median": 1.0, "min": 0.0, "max": 1.0}


def test_overlay_png_size_and_colours(tmp_path):
    import matplotlib.image as mpimg

    rng = np.random.default_rng(0)
    image = rng.normal(size=(1, 12, 10, 20)).astype(np.float32)  # (C, z, y, x)
    layers = np.zeros((1, 12, 10, 20), dtype=np.uint16)
    layers[0, :, :, :10], layers[0, :, :, 10:] = 1, 2
    stack = MaskStack(layers, [MaskInfo(0, 1, 1200, "left"), MaskInfo(0, 2, 1200, "right")])
    body = np.zeros((12, 10, 20), dtype=bool)
    body[2:10] = True
    path = tmp_path / "case.png"
    size = render_overlays(image, stack, body, (3.0, 1.0, 1.0), path, num_slices=4, panel_px=64)

    # rows: image, all masks, large masks; a 10 x 20 mm plane is 64 x 128 pixels; 22 px title strip
    assert size == (3 * 64 + 22, 4 * 128)
    picture = mpimg.imread(path)
    assert picture.shape[:2] == size and path.stat().st_size > 1000
    rgb = picture[..., :3]
    chroma = rgb.max(axis=-1) - rgb.min(axis=-1)
    image_row, mask_rows = chroma[22 + 16:22 + 64], chroma[22 + 64:]  # below the captions
    assert (image_row < 0.02).mean() > 0.99  # the image is grey
    assert (mask_rows > 0.2).mean() > 0.5  # the masks are coloured
    left, right = rgb[22 + 64 + 40, 30], rgb[22 + 64 + 40, 100]  # one pixel inside each mask
    assert np.abs(left - right).max() > 0.1  # in different colours


def test_slices_lie_evenly_in_the_body():
    body = np.zeros((30, 4, 4), dtype=bool)
    body[10:20] = True
    assert slice_positions(body, 0, 5) == [11, 13, 15, 17, 19]
    assert slice_positions(np.zeros((6, 4, 4), dtype=bool), 0, 3) == [1, 3, 5]  # no body: the whole axis


def test_view_geometry_shows_axial_slices_radiologically():
    lps_identity = {"sitk_stuff": {"direction": (1, 0, 0, 0, 1, 0, 0, 0, 1)}}
    ras_like = {"sitk_stuff": {"direction": (-1, 0, 0, 0, -1, 0, 0, 0, 1)}}  # as the phantoms are stored
    assert view_geometry(lps_identity, [0, 1, 2]) == (0, False, False, False)
    assert view_geometry(ras_like, [0, 1, 2]) == (0, False, True, True)
    assert view_geometry(lps_identity, [1, 0, 2]) == (1, False, False, False)  # nnU-Net moved z to axis 1
    assert view_geometry({}, [0, 1, 2]) == (0, False, False, False)  # no geometry: as stored


def test_inspect_a_preprocessed_dataset(dataset, tmp_path, capsys):
    out = tmp_path / "qa"
    result = inspect_dataset_masks(DATASET_ID, output_folder=out, num_slices=3, panel_px=48)
    printed = capsys.readouterr().out
    assert sorted(result["cases"]) == CASES and {p.name for p in out.iterdir()} == {*(f"{c}.png" for c in CASES),
                                                                                     "stats.json"}
    stats = json.loads((out / "stats.json").read_text())
    for case in CASES:
        stored = open_mask_stack(dataset["masks"], case)
        case_stats = stats["cases"][case]
        assert case_stats["num_masks"] == len(stored) == 4
        assert case_stats["sources"] == {"halves": 2, "bright": 2}
        assert case_stats["voxel_ml"] == pytest.approx(2.5 * 2.0 * 2.0 / 1000)  # the plans' spacing
        sizes = np.asarray([m.voxels for m in stored.masks])
        assert case_stats["size_ml"]["p50"] == pytest.approx(np.median(sizes) * 0.01)
        assert case_stats["body_covered"] == 1.0 and 0 < case_stats["body_ml"] < 24 * 32 * 32 * 0.01
        assert case in printed
    assert stats["summary"]["total_masks"] == 8 and "bright" in printed and "body covered" in printed


def test_command_line_and_missing_masks(dataset, capsys):
    from nnunet_mass.cli.inspect_masks import main

    (dataset["masks"] / "phantom_001.json").unlink()  # as if generation stopped before this case
    main(["-d", str(DATASET_ID), "-c", "3d_fullres", "-p", "nnUNetPlans", "--num_slices", "2"])
    printed = capsys.readouterr().out
    assert "1 case(s) without finished masks" in printed and "nnUNetv2_mass_generate_masks" in printed
    assert {p.name for p in (dataset["masks"] / "qa").iterdir()} == {"phantom_000.png", "stats.json"}

    with pytest.raises(SystemExit) as missing:
        main(["-d", DATASET, "--cases", "phantom_001"])
    assert "phantom_001" in str(missing.value.code) and "nnUNetv2_mass_generate_masks -d" in str(missing.value.code)
    with pytest.raises(SystemExit) as unknown:
        main(["-d", DATASET, "--cases", "phantom_007"])
    assert "phantom_007" in str(unknown.value.code)

    shutil.rmtree(dataset["masks"])
    with pytest.raises(MaskQAError, match="nnUNetv2_mass_generate_masks -d 103 -c 3d_fullres -p nnUNetPlans"):
        inspect_dataset_masks(DATASET_ID)
