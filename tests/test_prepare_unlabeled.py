"""Tests for nnUNetv2_mass_prepare_unlabeled on small synthetic scans (CT-like in HU, MR-like with bias)."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_mass.cli.prepare_unlabeled import main
from nnunet_mass.unlabeled import PreparationError, compute_body_mask, prepare_unlabeled_dataset
from nnunet_mass.unlabeled import prepare as prepare_module
from nnunet_mass.unlabeled.body_mask import axial_axis, is_ct_channel
from nnunet_mass.unlabeled.inputs import discover_cases, geometry_problem

SHAPE = (24, 40, 40)  # (z, y, x)
SPACING = (2.0, 2.0, 2.5)  # (x, y, z) mm, SimpleITK order


def ellipsoid(center, radii, shape=SHAPE) -> np.ndarray:
    """Boolean ellipsoid, centre and radii in voxels, (z, y, x)."""
    grid = np.ogrid[tuple(slice(0, n) for n in shape)]
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, center, radii)) <= 1


def to_image(array, spacing=SPACING, origin=(0.0, 0.0, 0.0), direction=None) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


def synthetic_ct(seed=0):
    """Body cut by the FOV in z, air-filled lung + trachea open to the top slice, separate table slab."""
    regions = {"body": ellipsoid((12, 18, 20), (30, 13, 17))}
    regions["lung"] = ellipsoid((12, 16, 14), (6, 5, 4))
    regions["trachea"] = np.zeros(SHAPE, bool)
    regions["trachea"][:12, 15:18, 13:16] = True
    regions["table"] = np.zeros(SHAPE, bool)
    regions["table"][:, 37, 5:35] = True  # 12 mm below the body
    hu = np.full(SHAPE, -1000.0)
    hu[regions["body"]] = 40
    hu[regions["lung"] | regions["trachea"]] = -850
    hu[regions["table"]] = 300
    hu += np.random.default_rng(seed).normal(0, 20, SHAPE)
    return to_image(hu.astype(np.int16)), regions


def synthetic_mr(seed=0):
    """Body with a multiplicative bias field (0.5-1.5 across x), a dark inner structure, Rician-like noise."""
    rng = np.random.default_rng(seed)
    body = ellipsoid((12, 18, 20), (30, 13, 17))
    dark = ellipsoid((12, 18, 22), (5, 4, 4))
    bias = np.linspace(0.5, 1.5, SHAPE[2])[None, None, :]
    signal = np.where(body, 300.0 * bias, 0.0)
    signal[dark] = 15
    noisy = np.hypot(signal + rng.normal(0, 8, SHAPE), rng.normal(0, 8, SHAPE))
    return to_image(noisy.astype(np.float32)), {"body": body, "dark": dark}


def mask_array(mask: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(mask).astype(bool)


def write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))
    return path


@pytest.fixture
def raw_root(tmp_path, monkeypatch):
    root = tmp_path / "nnUNet_raw"
    monkeypatch.setenv("nnUNet_raw", str(root))
    for variable in ("nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.delenv(variable, raising=False)
    return root


# --- body mask ---------------------------------------------------------------------------

def test_ct_body_mask_covers_body_fills_lungs_and_drops_table_and_air():
    image, regions = synthetic_ct()
    mask_image = compute_body_mask([image], ["CT"])
    mask = mask_array(mask_image)
    assert mask_image.GetPixelID() == sitk.sitkUInt8
    assert mask_image.GetSize() == image.GetSize() and mask_image.GetOrigin() == image.GetOrigin()
    assert mask[regions["body"]].mean() > 0.95
    assert mask[regions["lung"] | regions["trachea"]].all()
    assert not mask[regions["table"]].any()
    near_body = ndimage.binary_dilation(regions["body"], iterations=3)
    assert mask[~near_body].mean() < 0.01


def test_mr_body_mask_with_bias_field():
    image, regions = synthetic_mr()
    mask = mask_array(compute_body_mask([image], ["T2"]))
    assert mask[regions["body"]].mean() > 0.95
    assert mask[regions["dark"]].all()
    assert mask[~ndimage.binary_dilation(regions["body"], iterations=3)].mean() < 0.01


def test_multichannel_mask_is_union_of_channels():
    ct, regions = synthetic_ct()
    mr_array = np.zeros(SHAPE, np.float32)
    extra = ellipsoid((12, 6, 20), (30, 3, 14))  # bright only in MR, touching the CT body
    mr_array[regions["body"] | extra] = 200
    mask = mask_array(compute_body_mask([ct, to_image(mr_array)], ["CT", "T2"]))
    assert mask[extra].mean() > 0.9 and mask[regions["body"]].mean() > 0.95


def test_channel_helpers():
    assert is_ct_channel("CT") and is_ct_channel("ct_venous") and not is_ct_channel("SPECT")
    assert not is_ct_channel("T2")
    assert axial_axis((1, 0, 0, 0, 1, 0, 0, 0, 1)) == 0
    assert axial_axis((0, 0, 1, 0, 1, 0, 1, 0, 0)) == 2  # index axis x runs head-foot (sagittal stack)
    assert geometry_problem((1, 1, 1), np.eye(3).ravel()) is None
    assert "not positive" in geometry_problem((1, 0, 1), np.eye(3).ravel())
    assert "not positive" in geometry_problem((1, float("nan"), 1), np.eye(3).ravel())
    assert "degenerate" in geometry_problem((1, 1, 1), (1, 0, 0, 1, 0, 0, 0, 0, 1))
    assert "orthonormal" in geometry_problem((1, 1, 1), (1, 0.2, 0, 0, 1, 0, 0, 0, 1))


# --- discovery ---------------------------------------------------------------------------

def test_discovery_groups_channels_and_reports_incomplete_cases(tmp_path):
    names = ["a_0000.nii.gz", "a_0001.nrrd", "b_0000.mha", "c.nii.gz", "d_0000.nii", "d_0000.nii.gz",
             "e_0000.mha", "e_0001.mha", "e_0002.mha", "e_0001.raw", ".f_0000.nii.gz", "notes.txt"]
    for name in names:
        (tmp_path / name).touch()
    (tmp_path / "sub_0000.nii.gz").mkdir()
    cases, skipped = discover_cases(tmp_path, num_channels=2)
    assert [(c.case_id, [p.name for p in c.files]) for c in cases] == [("a", ["a_0000.nii.gz", "a_0001.nrrd"])]
    assert set(skipped) == {"b", "c.nii.gz", "d", "e"}
    assert "missing channel(s) 0001" in skipped["b"]
    assert "no _XXXX channel suffix" in skipped["c.nii.gz"]
    assert "several files" in skipped["d"]
    assert "unexpected channel(s) 0002" in skipped["e"]


def test_single_channel_accepts_files_without_suffix(tmp_path):
    for name in ["scan1.nii.gz", "scan2_0000.mha", "scan3_0001.nrrd"]:
        (tmp_path / name).touch()
    cases, skipped = discover_cases(tmp_path, num_channels=1)
    assert [c.case_id for c in cases] == ["scan1", "scan2"]
    assert "missing channel(s) 0000" in skipped["scan3"]


# --- preparing datasets ------------------------------------------------------------------

def test_prepare_preserves_geometry_and_pixel_type(tmp_path, raw_root):
    ct, _ = synthetic_ct()
    # Sagittal-like stack: index x runs head-foot, rotated grid, anisotropic spacing, odd origin.
    direction = (0.0, 0.0, 1.0, np.cos(0.3), -np.sin(0.3), 0.0, np.sin(0.3), np.cos(0.3), 0.0)
    ct = to_image(sitk.GetArrayFromImage(ct), spacing=(0.9, 2.2, 3.0), origin=(-10.0, 20.5, 33.0),
                  direction=direction)
    write(ct, tmp_path / "in" / "pat.nrrd")
    report = prepare_unlabeled_dataset(tmp_path / "in", 7, "Geo", ["CT"])
    assert report.dataset_folder == raw_root / "Dataset007_Geo" and report.accepted == ["pat"]
    image = sitk.ReadImage(str(report.dataset_folder / "imagesTr" / "pat_0000.nii.gz"))
    label = sitk.ReadImage(str(report.dataset_folder / "labelsTr" / "pat.nii.gz"))
    for written in (image, label):
        assert np.allclose(written.GetSpacing(), ct.GetSpacing(), atol=1e-5)
        assert np.allclose(written.GetOrigin(), ct.GetOrigin(), atol=1e-4)
        assert np.allclose(written.GetDirection(), ct.GetDirection(), atol=1e-5)
    assert image.GetPixelID() == sitk.sitkInt16 and label.GetPixelID() == sitk.sitkUInt8
    assert np.array_equal(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(ct))
    assert set(np.unique(sitk.GetArrayFromImage(label))) == {0, 1}


def test_prepare_multichannel_dataset_json_and_near_identical_grids(tmp_path, raw_root):
    for case, seed in (("a", 0), ("b", 1)):
        ct, _ = synthetic_ct(seed)
        mr, _ = synthetic_mr(seed)
        mr.SetOrigin((1e-5, 0.0, 0.0))  # converter float noise: accepted, then made identical
        write(ct, tmp_path / "in" / f"{case}_0000.nii.gz")
        write(mr, tmp_path / "in" / f"{case}_0001.mha")
    report = prepare_unlabeled_dataset(tmp_path / "in", 12, "Multi", ["CT", "T2"])
    assert report.accepted == ["a", "b"] and report.skipped == {}
    folder = report.dataset_folder
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [
        "a_0000.nii.gz", "a_0001.nii.gz", "b_0000.nii.gz", "b_0001.nii.gz"]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["a.nii.gz", "b.nii.gz"]
    assert sitk.ReadImage(str(folder / "imagesTr" / "a_0001.nii.gz")).GetOrigin() == (0.0, 0.0, 0.0)
    dataset = json.loads((folder / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "CT", "1": "T2"}
    assert dataset["labels"] == {"background": 0, "foreground": 1}
    assert dataset["numTraining"] == 2 and dataset["file_ending"] == ".nii.gz"
    assert "body mask" in dataset["description"]


def test_invalid_cases_are_skipped_with_reasons(tmp_path, raw_root):
    good, _ = synthetic_ct()
    folder = tmp_path / "in"
    write(good, folder / "good_0000.nii.gz")
    folder.joinpath("garbage_0000.nii.gz").write_bytes(np.random.default_rng(0).bytes(500))
    nan = sitk.GetArrayFromImage(good).astype(np.float32)
    nan[3, 4, 5] = np.nan
    write(to_image(nan), folder / "nan_0000.mha")  # ITK's NIfTI reader turns NaN into 0 itself
    nan[3, 4, 5] = np.inf
    write(to_image(nan), folder / "inf_0000.nrrd")
    write(to_image(np.full(SHAPE, 7, np.int16)), folder / "constant_0000.nii.gz")
    write(sitk.GetImageFromArray(np.arange(100, dtype=np.int16).reshape(10, 10)), folder / "flat_0000.nrrd")
    tiny = np.full(SHAPE, -1000, np.int16)
    tiny[10:14, 10:14, 10:14] = 50  # 4 x 4 x 4 voxels of 10 mm^3: 0.6 ml of "body"
    write(to_image(tiny), folder / "tiny_0000.nii.gz")

    report = prepare_unlabeled_dataset(folder, 5, "Skips", ["CT"])
    assert report.accepted == ["good"]
    skipped = report.skipped
    assert set(skipped) == {"garbage", "nan", "inf", "constant", "flat", "tiny"}
    assert skipped["garbage"].startswith("garbage_0000.nii.gz: unreadable (Unable to determine ImageIO reader")
    assert "NaN" in skipped["nan"] and "infinite" in skipped["inf"] and "constant" in skipped["constant"]
    assert "not 3D (2D" in skipped["flat"] and "ml" in skipped["tiny"]
    assert all("\n" not in reason for reason in skipped.values())
    assert json.loads((report.dataset_folder / "dataset.json").read_text())["numTraining"] == 1


def test_mismatched_or_missing_channels_are_skipped(tmp_path, raw_root):
    folder = tmp_path / "in"
    ct, _ = synthetic_ct()
    mr, _ = synthetic_mr()
    write(ct, folder / "ok_0000.nii.gz")
    write(mr, folder / "ok_0001.nii.gz")
    write(ct, folder / "shifted_0000.nii.gz")
    write(to_image(sitk.GetArrayFromImage(mr), origin=(5.0, 0.0, 0.0)), folder / "shifted_0001.nii.gz")
    write(ct, folder / "spacing_0000.nii.gz")
    write(to_image(sitk.GetArrayFromImage(mr), spacing=(2.0, 2.0, 3.0)), folder / "spacing_0001.nii.gz")
    write(ct, folder / "size_0000.nii.gz")
    write(to_image(sitk.GetArrayFromImage(mr)[:-1]), folder / "size_0001.nii.gz")
    write(ct, folder / "lonely_0000.nii.gz")

    report = prepare_unlabeled_dataset(folder, 6, "Mismatch", ["CT", "T1"])
    assert report.accepted == ["ok"]
    assert "origin" in report.skipped["shifted"] and "shifted_0001.nii.gz" in report.skipped["shifted"]
    assert "spacing" in report.skipped["spacing"] and "size" in report.skipped["size"]
    assert "missing channel(s) 0001" in report.skipped["lonely"]


@pytest.mark.parametrize("failure", [OSError("disk full"), KeyboardInterrupt()])
def test_failure_midway_leaves_nothing_behind(tmp_path, raw_root, monkeypatch, failure):
    for case in ("a", "b", "c"):
        write(synthetic_ct()[0], tmp_path / "in" / f"{case}.nii.gz")
    real_write, calls = prepare_module.write_case, []

    def failing_write(*args):
        calls.append(args[1])
        if len(calls) == 2:
            raise failure
        real_write(*args)

    monkeypatch.setattr(prepare_module, "write_case", failing_write)
    with pytest.raises(type(failure)):
        prepare_unlabeled_dataset(tmp_path / "in", 8, "Broken", ["CT"])
    assert calls == ["a", "b"]
    assert list(raw_root.iterdir()) == []


def test_no_valid_case_is_an_error_and_leaves_nothing(tmp_path, raw_root):
    write(to_image(np.zeros(SHAPE, np.int16)), tmp_path / "in" / "zero.nii.gz")
    with pytest.raises(PreparationError, match="(?s)no valid case.*zero.*constant"):
        prepare_unlabeled_dataset(tmp_path / "in", 9, "Empty", ["CT"])
    assert list(raw_root.iterdir()) == []


def test_existing_id_is_refused_before_reading_and_replaced_with_overwrite(tmp_path, raw_root):
    old = raw_root / "Dataset101_Old"
    old.mkdir(parents=True)
    (old / "marker").touch()
    with pytest.raises(PreparationError, match="already exists.*Dataset101_Old.*--overwrite"):
        prepare_unlabeled_dataset(tmp_path / "does_not_exist", 101, "New", ["CT"])
    write(synthetic_ct()[0], tmp_path / "in" / "a.nii.gz")
    report = prepare_unlabeled_dataset(tmp_path / "in", 101, "New", ["CT"], overwrite=True)
    assert sorted(p.name for p in raw_root.iterdir()) == ["Dataset101_New"]
    assert report.accepted == ["a"]


def test_raw_root_must_be_set(tmp_path, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    with pytest.raises(PreparationError, match="nnUNet_raw is not set"):
        prepare_unlabeled_dataset(tmp_path, 1, "X", ["CT"])


def test_cli_with_two_processes(tmp_path, raw_root, capsys):
    for case, seed in (("a", 0), ("b", 1), ("c", 2)):
        write(synthetic_mr(seed)[0], tmp_path / "in" / f"{case}_0000.nii.gz")
    write(to_image(np.ones(SHAPE, np.float32)), tmp_path / "in" / "flat_0000.nii.gz")
    main(["-i", str(tmp_path / "in"), "-d", "42", "-n", "Cli", "-cn", "T2", "-np", "2", "--min_body_ml", "10"])
    folder = raw_root / "Dataset042_Cli"
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["a.nii.gz", "b.nii.gz", "c.nii.gz"]
    output = capsys.readouterr().out
    assert "3 case(s) accepted, 1 skipped" in output and "flat: flat_0000.nii.gz: constant" in output
    with pytest.raises(SystemExit, match="already exists"):
        main(["-i", str(tmp_path / "in"), "-d", "42", "-n", "Again", "-cn", "T2"])


def test_id_used_under_another_name_in_preprocessed_is_refused(tmp_path, raw_root, monkeypatch):
    preprocessed = tmp_path / "nnUNet_preprocessed"
    (preprocessed / "Dataset077_Old").mkdir(parents=True)
    monkeypatch.setenv("nnUNet_preprocessed", str(preprocessed))
    write(synthetic_ct()[0], tmp_path / "in" / "a.nii.gz")
    with pytest.raises(PreparationError, match="Dataset077_Old uses dataset id 77 under another name"):
        prepare_unlabeled_dataset(tmp_path / "in", 77, "New", ["CT"])
    assert prepare_unlabeled_dataset(tmp_path / "in", 77, "Old", ["CT"]).accepted == ["a"]
