import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_mass.cli.make_phantoms import main
from nnunet_mass.phantoms import PHANTOM_LABELS, case_rng, make_phantom, phantom_geometry, write_phantom_dataset
from nnunet_mass.phantoms.anatomy import Tissue, build_anatomy, labels_from_tissue
from nnunet_mass.phantoms.appearance import finish_mr, render, smooth_field

SPACING = (2.5, 2.0, 2.0)
SHAPE = (64, 64, 64)
SEEDS = range(6)
SMALL = {"shape": (24, 24, 24), "spacing": (5.0, 4.0, 4.0)}  # whole torso, few voxels: fast file tests


def _case(seed: int, modality: str):
    """(tissue, image, labels) the way make_phantom builds them."""
    rng = np.random.default_rng(seed)
    tissue = build_anatomy(rng, SHAPE, SPACING)
    return tissue, render(rng, tissue, SPACING, modality), labels_from_tissue(tissue)


@pytest.fixture(scope="module")
def ct_cases():
    return [_case(seed, "CT") for seed in SEEDS]


@pytest.fixture(scope="module")
def mr_cases():
    return [_case(seed, "MR") for seed in SEEDS[:3]]


def _median(image, mask) -> float:
    assert mask.any()
    return float(np.median(image[mask]))


# ---------------------------------------------------------------- arrays

@pytest.mark.parametrize("modality", ["CT", "MR"])
def test_arrays_are_z_y_x_with_documented_dtypes(modality):
    image, labels = make_phantom(np.random.default_rng(0), modality, shape=(20, 40, 32), spacing=(3.0, 2.0, 2.5))
    assert image.shape == labels.shape == (20, 40, 32)
    assert image.dtype == np.float32 and labels.dtype == np.uint8
    assert np.isfinite(image).all()
    assert set(np.unique(labels)) <= set(PHANTOM_LABELS.values())


def test_same_seed_gives_the_same_case_and_another_seed_a_different_one():
    first, again, other = (make_phantom(np.random.default_rng(s)) for s in (3, 3, 4))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[1], other[1])
    assert not np.allclose(first[0], other[0])


def test_make_phantom_is_anatomy_then_appearance_so_ct_and_mr_share_labels(ct_cases, mr_cases):
    image, labels = make_phantom(np.random.default_rng(1), "CT")
    np.testing.assert_array_equal(image, ct_cases[1][1])
    np.testing.assert_array_equal(labels, ct_cases[1][2])
    np.testing.assert_array_equal(mr_cases[1][2], ct_cases[1][2])


# ---------------------------------------------------------------- anatomy

def test_every_label_is_present_with_at_least_50_voxels(ct_cases):
    for _, _, labels in ct_cases:
        counts = np.bincount(labels.ravel(), minlength=len(PHANTOM_LABELS))
        assert len(counts) == len(PHANTOM_LABELS)
        assert counts.min() >= 50, dict(zip(PHANTOM_LABELS, counts))


@pytest.mark.parametrize("shape", [(16, 16, 16), (16, 64, 64), (64, 16, 16)])
def test_every_label_is_present_even_on_the_smallest_grids(shape):
    _, labels = make_phantom(np.random.default_rng(5), "CT", shape=shape)
    assert set(np.unique(labels)) == set(PHANTOM_LABELS.values())


def test_structures_stay_inside_the_body_and_the_body_inside_the_field_of_view(ct_cases):
    for tissue, _, labels in ct_cases:
        air = tissue == Tissue.AIR
        assert not (ndimage.binary_dilation(air) & (labels > 0)).any(), "a labeled voxel touches air"
        in_plane_border = np.ones(air.shape[1:], dtype=bool)
        in_plane_border[1:-1, 1:-1] = False
        assert air[:, in_plane_border].all(), "the body touches the side of the volume"
        assert not air[:, 32, 32].any(), "the body runs through every slice"


def test_structures_have_their_characteristic_topology(ct_cases):
    for _, _, labels in ct_cases:
        def components(name):
            return ndimage.label(labels == PHANTOM_LABELS[name])[1]

        assert components("kidney") == 2  # a pair
        assert components("vertebrae") >= 6  # a chain of separate bones
        vessel = labels == PHANTOM_LABELS["vessel"]
        assert components("vessel") == 1 and vessel.any(axis=(1, 2)).all()  # one tube through every slice


def test_lesions_lie_inside_the_liver(ct_cases):
    for _, _, labels in ct_cases:
        lesion = labels == PHANTOM_LABELS["lesion"]
        rim = ndimage.binary_dilation(lesion) & ~lesion
        assert (labels[rim] == PHANTOM_LABELS["liver"]).mean() > 0.95


def test_sizes_are_millimetres_so_voxel_counts_follow_the_spacing():
    def volumes_mm3(spacing, shape=SHAPE):
        labels = labels_from_tissue(build_anatomy(np.random.default_rng(2), shape, spacing))
        counts = np.bincount(labels.ravel(), minlength=len(PHANTOM_LABELS))
        return counts * np.prod(spacing)

    reference = volumes_mm3(SPACING)
    coarse = volumes_mm3((3.75, 3.0, 3.0))
    larger_fov = volumes_mm3(SPACING, shape=(96, 96, 96))
    for name in ("liver", "kidney", "spleen", "lesion"):
        value = PHANTOM_LABELS[name]
        assert coarse[value] == pytest.approx(reference[value], rel=0.25), name
        assert larger_fov[value] == pytest.approx(reference[value], rel=0.02), name


# ---------------------------------------------------------------- appearance

def test_ct_values_are_plausible_hounsfield_units(ct_cases):
    for tissue, image, labels in ct_cases:
        far_air = ndimage.binary_erosion(tissue == Tissue.AIR, iterations=2)
        assert -1010 < _median(image, far_air) < -990
        assert -900 < _median(image, ndimage.binary_erosion(tissue == Tissue.LUNG)) < -800
        fat_off_air = (tissue == Tissue.FAT) & ~ndimage.binary_dilation(tissue == Tissue.AIR)  # no partial volume
        assert -140 < _median(image, fat_off_air) < -60
        for soft in (Tissue.MUSCLE, Tissue.SOFT):
            assert 25 < _median(image, tissue == soft) < 75
        medians = {name: _median(image, labels == value) for name, value in PHANTOM_LABELS.items() if value}
        assert medians["vessel"] > medians["liver"] + 50
        assert medians["lesion"] < medians["liver"]
        assert medians["vertebrae"] == max(medians.values())
        assert 400 <= np.percentile(image[labels == PHANTOM_LABELS["vertebrae"]], 90) <= 1100
        assert 10 < np.std(image[far_air]) < 21  # the added Gaussian noise, air is otherwise flat


def test_mr_contrast_is_ordered_differently_from_ct(ct_cases, mr_cases):
    for (tissue, ct, labels), (_, mr, _) in zip(ct_cases, mr_cases):
        liver, vessel = labels == PHANTOM_LABELS["liver"], labels == PHANTOM_LABELS["vessel"]
        fat, air = tissue == Tissue.FAT, ndimage.binary_erosion(tissue == Tissue.AIR, iterations=2)
        assert mr.min() >= 0
        assert _median(mr, air) < 0.1 * _median(mr, fat)
        assert _median(ct, fat) < _median(ct, liver) < _median(ct, vessel)
        assert _median(mr, fat) > _median(mr, liver) > _median(mr, vessel)


def test_mr_finish_applies_a_smooth_multiplicative_bias_and_rician_noise():
    flat = np.zeros((32, 32, 32), dtype=np.float32)
    flat[:, :, 16:] = 500.0  # half air, half one uniform tissue
    mr = finish_mr(np.random.default_rng(0), flat, SPACING)
    assert mr.min() >= 0
    assert 0 < mr[:, :, :14].mean() < 0.1 * mr[:, :, 18:].mean()  # Rician floor in air: positive, small
    tissue = ndimage.uniform_filter(mr, 5)[4:-4, 4:-4, 20:-4]  # averages the noise, keeps the bias
    assert np.ptp(tissue) / tissue.mean() > 0.15


def test_smooth_field_is_normalised_and_correlated_over_its_length():
    field = smooth_field(np.random.default_rng(0), (40, 48, 56), (2.5, 2.0, 2.0), 15.0)
    assert field.shape == (40, 48, 56) and field.dtype == np.float32
    assert abs(field.mean()) < 1e-3 and field.std() == pytest.approx(1.0, abs=1e-3)
    neighbours = np.corrcoef(field[:, :, :-1].ravel(), field[:, :, 1:].ravel())[0, 1]
    assert neighbours > 0.9


# ---------------------------------------------------------------- dataset folder

def test_dataset_folder_layout_and_dataset_json(tmp_path):
    folder = write_phantom_dataset(tmp_path, 990, "PhantomCT", 2, seed=7, **SMALL)
    assert folder == tmp_path / "Dataset990_PhantomCT"
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == ["phantom_000_0000.nii.gz",
                                                                        "phantom_001_0000.nii.gz"]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == ["phantom_000.nii.gz", "phantom_001.nii.gz"]
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "CT"}
    assert meta["labels"] == PHANTOM_LABELS
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"


def test_geometry_and_arrays_round_trip_through_simpleitk_in_xyz_order(tmp_path):
    shape, spacing = (20, 24, 28), (3.0, 1.5, 2.0)  # all different, so a swapped axis shows
    folder = write_phantom_dataset(tmp_path, 5, "Geo", 1, seed=11, modality="MR", shape=shape, spacing=spacing,
                                   case_prefix="geo")
    image = sitk.ReadImage(str(folder / "imagesTr" / "geo_000_0000.nii.gz"))
    labels = sitk.ReadImage(str(folder / "labelsTr" / "geo_000.nii.gz"))
    for written in (image, labels):
        assert written.GetSize() == (28, 24, 20)
        assert written.GetSpacing() == pytest.approx((2.0, 1.5, 3.0))
        assert written.GetDirection() == pytest.approx((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        assert written.GetOrigin() == pytest.approx(phantom_geometry(shape, spacing)["origin"], abs=1e-4)
        assert np.linalg.norm(written.GetOrigin()) > 10
        centre = written.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in written.GetSize()])
        assert centre == pytest.approx((0, 0, 0), abs=1e-4)
    assert image.GetPixelID() == sitk.sitkFloat32 and labels.GetPixelID() == sitk.sitkUInt8
    expected_image, expected_labels = make_phantom(case_rng(11, 0), "MR", shape, spacing)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), expected_image)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(labels), expected_labels)
    assert json.loads((folder / "dataset.json").read_text())["channel_names"] == {"0": "MR"}


def test_a_case_depends_on_seed_and_index_only(tmp_path):
    one = write_phantom_dataset(tmp_path, 1, "One", 1, seed=3, **SMALL)
    three = write_phantom_dataset(tmp_path, 2, "Three", 3, seed=3, **SMALL)
    read = [sitk.GetArrayFromImage(sitk.ReadImage(str(f / "labelsTr" / "phantom_000.nii.gz"))) for f in (one, three)]
    np.testing.assert_array_equal(*read)


def test_unlabeled_pool_has_no_labels_folder_and_only_background(tmp_path):
    folder = write_phantom_dataset(tmp_path, 3, "Pool", 2, labeled=False, **SMALL)
    assert not (folder / "labelsTr").exists()
    assert len(list((folder / "imagesTr").iterdir())) == 2
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["labels"] == {"background": 0} and meta["numTraining"] == 2


@pytest.mark.parametrize("kwargs, message", [
    ({"num_cases": 0}, "num_cases"),
    ({"modality": "PET"}, "modality"),
    ({"shape": (64, 15, 64)}, "shape"),
    ({"shape": (64, 64)}, "shape"),
    ({"spacing": (2.5, 0.0, 2.0)}, "spacing"),
    ({"spacing": (2.5, -1.0, 2.0)}, "spacing"),
    ({"dataset_id": 0}, "dataset_id"),
    ({"name": "bad/name"}, "name"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments_are_refused_before_anything_is_written(tmp_path, kwargs, message):
    arguments = {"dataset_id": 4, "name": "Bad", "num_cases": 1, **kwargs}
    with pytest.raises(ValueError, match=message):
        write_phantom_dataset(tmp_path / "raw", **arguments)
    assert not list((tmp_path / "raw").glob("Dataset*")) if (tmp_path / "raw").exists() else True


def test_an_existing_dataset_id_is_refused_unless_overwrite(tmp_path):
    write_phantom_dataset(tmp_path, 9, "First", 1, **SMALL)
    with pytest.raises(ValueError, match="already holds dataset id 9.*Dataset009_First"):
        write_phantom_dataset(tmp_path, 9, "Second", 1, **SMALL)
    folder = write_phantom_dataset(tmp_path, 9, "Second", 1, overwrite=True, **SMALL)
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]


# ---------------------------------------------------------------- command line

def test_cli_writes_a_dataset_into_nnunet_raw(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    main(["-d", "12", "-n", "2", "-m", "MR", "--shape", "24", "24", "24", "--spacing", "5", "4", "4", "--unlabeled"])
    folder = tmp_path / "Dataset012_PhantomMR"
    assert "Dataset012_PhantomMR" in capsys.readouterr().out
    assert len(list((folder / "imagesTr").iterdir())) == 2 and not (folder / "labelsTr").exists()
    meta = json.loads((folder / "dataset.json").read_text())
    assert meta["channel_names"] == {"0": "MR"} and meta["labels"] == {"background": 0}


def test_cli_turns_bad_arguments_into_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["-d", "12", "-n", "0", "--raw_root", str(tmp_path)])
    assert stop.value.code == 2
    assert "num_cases" in capsys.readouterr().err
