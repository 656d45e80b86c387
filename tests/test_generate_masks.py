"""nnUNetv2_mass_generate_masks on a real (tiny) nnU-Net-preprocessed phantom dataset."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from helpers import copy_dataset, preprocessed_phantoms, read_preprocessed
from nnunet_mass.masks.dataset_masks import (CaseInputError, CaseJob, MaskGenerationError, check_image_for_proposals,
                                             generate_case_masks, generate_dataset_masks)
from nnunet_mass.masks.stack import MaskStack
from nnunet_mass.masks.store import finished_cases, is_finished, open_mask_stack

DATASET_ID = 101
DATASET = "Dataset101_MaskPhantoms"
DATA_IDENTIFIER = "nnUNetPlans_3d_fullres"
CASES = ["phantom_000", "phantom_001", "phantom_002"]
CALLS = []  # one entry per fake_generator call in this process


def fake_generator(image, spacing_zyx, settings=None):
    """Deterministic stand-in for the classical generator: intensity terciles + bright components."""
    CALLS.append(spacing_zyx)
    channel = image[0]
    terciles = np.digitize(channel, np.quantile(channel, [1 / 3, 2 / 3])).astype(np.uint16) + 1
    components, _ = ndimage.label(channel > np.quantile(channel, 0.8))
    return MaskStack.from_layers([terciles, components.astype(np.uint16)], ["fake_terciles", "fake_components"])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    """Raw + preprocessed phantom dataset, made once through nnU-Net's own fingerprint,
    planner and preprocessor (Python API, in this process)."""
    return preprocessed_phantoms(tmp_path_factory.mktemp("pristine"), DATASET_ID, DATASET.split("_", 1)[1],
                                 num_cases=3, seed=3, shape=(32, 40, 40))


@pytest.fixture
def dataset(pristine, nnunet_env):
    """A private copy of the pristine dataset in this test's nnU-Net folders."""
    return copy_dataset(pristine, nnunet_env, DATASET)


def read_data(dataset, case):
    return read_preprocessed(dataset, case)


def read_seg(dataset, case):
    return read_preprocessed(dataset, case, "_seg")


def rewrite_data(dataset, case, array):
    import blosc2

    path = dataset["data"] / f"{case}.b2nd"
    path.unlink()
    blosc2.asarray(np.ascontiguousarray(array, dtype=np.float32), urlpath=str(path))


def stored_layers(dataset):
    return {case: open_mask_stack(dataset["masks"], case).load() for case in finished_cases(dataset["masks"])}


def test_generates_every_case_then_resumes_and_overwrites(dataset):
    CALLS.clear()
    report = generate_dataset_masks(DATASET_ID, generator=fake_generator)
    assert report.ok and report.done == CASES and report.skipped == [] and len(CALLS) == 3
    assert CALLS[0] == (2.5, 2.0, 2.0)  # the configuration's spacing, (z, y, x)
    assert not list(dataset["data"].glob("*_mass_masks*"))  # nothing of ours inside nnU-Net's data folder

    for case in CASES:
        data = read_data(dataset, case)
        stored = open_mask_stack(dataset["masks"], case, data_shape=data.shape)
        expected = fake_generator(data.astype(np.float32), (2.5, 2.0, 2.0))
        assert stored.masks == expected.masks and np.array_equal(stored.load().layers, expected.layers)
        meta = stored.metadata
        assert meta["data_shape"] == list(data.shape) and meta["dataset"] == DATASET
        assert meta["generator"]["function"].endswith("fake_generator") and meta["configuration"] == "3d_fullres"

    CALLS.clear()
    report = generate_dataset_masks(str(DATASET_ID), generator=fake_generator)
    assert report.skipped == CASES and report.done == [] and len(CALLS) == 0

    (dataset["masks"] / "phantom_001.json").unlink()  # as if killed before the index landed
    report = generate_dataset_masks(DATASET, generator=fake_generator)
    assert report.done == ["phantom_001"] and sorted(report.skipped) == ["phantom_000", "phantom_002"]
    assert len(CALLS) == 1

    report = generate_dataset_masks(DATASET_ID, generator=fake_generator, overwrite=True)
    assert report.done == CASES and len(CALLS) == 4


def test_parallel_run_matches_serial(dataset):
    generate_dataset_masks(DATASET_ID, generator=fake_generator, num_processes=1)
    serial = stored_layers(dataset)
    report = generate_dataset_masks(DATASET_ID, generator=fake_generator, num_processes=2, overwrite=True)
    assert report.ok and report.done == CASES
    parallel = stored_layers(dataset)
    assert sorted(parallel) == CASES
    for case in CASES:
        assert parallel[case].masks == serial[case].masks
        assert np.array_equal(parallel[case].layers, serial[case].layers)


def test_bad_cases_are_reported_by_name_while_others_finish(dataset):
    data = read_data(dataset, "phantom_000")
    data[0, 3, 4, 5] = np.nan
    rewrite_data(dataset, "phantom_000", data)
    (dataset["data"] / "phantom_001.b2nd").unlink()

    report = generate_dataset_masks(DATASET_ID, generator=fake_generator)
    assert report.done == ["phantom_002"] and not report.ok
    assert "NaN" in report.failed["phantom_000"]
    assert "phantom_001.b2nd missing" in report.failed["phantom_001"]
    assert "phantom_001.pkl is there" in report.failed["phantom_001"]
    assert "nnUNetv2_preprocess" in report.failed["phantom_001"]
    assert "FAILED phantom_000" in report.summary()

    rewrite_data(dataset, "phantom_002", np.full_like(data, 0.25))
    report = generate_dataset_masks(DATASET_ID, generator=fake_generator, overwrite=True)
    assert "constant" in report.failed["phantom_002"] and "no foreground" in report.failed["phantom_002"]


def test_single_voxel_dimension_is_rejected():
    with pytest.raises(CaseInputError, match="single-voxel"):
        check_image_for_proposals(np.random.default_rng(0).normal(size=(1, 1, 8, 8)).astype(np.float32))


def broken_generator(image, spacing_zyx, settings=None):
    raise RuntimeError("boom")


def test_generator_errors_come_back_with_a_traceback(dataset):
    report = generate_dataset_masks(DATASET_ID, generator=broken_generator)
    assert sorted(report.failed) == CASES and report.failed["phantom_000"] == "RuntimeError: boom"
    job = CaseJob(str(dataset["data"]), str(dataset["masks"]), str(dataset["preprocessed"] / "nnUNetPlans.json"),
                  "3d_fullres", broken_generator, None, None, None, {})
    result = generate_case_masks("phantom_000", job)
    assert "broken_generator" in result.details and not is_finished(dataset["masks"], "phantom_000")


def test_imported_labels_equal_nnunets_own_preprocessed_segmentation(dataset):
    labels = dataset["raw"] / "labelsTr"
    report = generate_dataset_masks(DATASET_ID, from_labels=str(labels), mix_generated=False)
    assert report.ok and report.done == CASES
    for case in CASES:
        stored = open_mask_stack(dataset["masks"], case)
        seg = read_seg(dataset, case)[0]
        assert stored.shape == (1, *seg.shape)
        assert np.array_equal(stored.load().layers[0], np.where(seg > 0, seg, 0))
        assert {m.label for m in stored.masks} == set(np.unique(seg[seg > 0]).tolist())
        assert {m.source for m in stored.masks} == {"labels:labelsTr"}
        assert stored.metadata["generator"] is None

    CALLS.clear()
    report = generate_dataset_masks(DATASET_ID, from_labels=str(labels), generator=fake_generator, overwrite=True)
    assert report.done == CASES and len(CALLS) == 3
    mixed = open_mask_stack(dataset["masks"], "phantom_000").load()
    assert mixed.layers.shape[0] == 3 and mixed.masks[0].source == "labels:labelsTr"
    assert {m.layer for m in mixed.masks if m.source.startswith("fake")} == {1, 2}
    seg = read_seg(dataset, "phantom_000")[0]
    assert np.array_equal(mixed.layers[0], np.where(seg > 0, seg, 0))


def test_wrong_or_missing_label_maps_fail_their_case_only(dataset, tmp_path):
    import SimpleITK as sitk

    labels = tmp_path / "atlas"
    shutil.copytree(dataset["raw"] / "labelsTr", labels)
    image = sitk.ReadImage(str(labels / "phantom_000.nii.gz"))
    wrong = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[:, :, :38])
    wrong.SetSpacing(image.GetSpacing())
    wrong.SetOrigin(image.GetOrigin())
    wrong.SetDirection(image.GetDirection())
    sitk.WriteImage(wrong, str(labels / "phantom_000.nii.gz"))
    (labels / "phantom_001.nii.gz").unlink()

    report = generate_dataset_masks(DATASET_ID, from_labels=str(labels), mix_generated=False)
    assert report.done == ["phantom_002"]
    assert "size [32, 40, 38] but the raw image of case phantom_000 has [32, 40, 40]" in report.failed["phantom_000"]
    assert "no label map phantom_001" in report.failed["phantom_001"]
    assert open_mask_stack(dataset["masks"], "phantom_002").masks[0].source == "labels:atlas"

    image = sitk.ReadImage(str(labels / "phantom_002.nii.gz"))
    image.SetSpacing((2.0, 2.0, 3.0))
    sitk.WriteImage(image, str(labels / "phantom_001.nii.gz"))
    report = generate_dataset_masks(DATASET_ID, from_labels=str(labels), mix_generated=False)
    assert "spacing [3.0, 2.0, 2.0] but the raw image of case phantom_001 has [2.5, 2.0, 2.0]" in report.failed[
        "phantom_001"]


@pytest.mark.parametrize("original_spacing, target_spacing", [((2.5, 2.0, 2.0), (3.0, 1.5, 1.7)),
                                                              ((6.0, 1.0, 1.0), (4.0, 1.5, 1.5))])
def test_crop_and_resampling_match_nnunets_preprocessor(pristine, original_spacing, target_spacing):
    """Where nnU-Net crops and resamples, the import does exactly what its preprocessor does."""
    import copy

    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager

    from nnunet_mass.masks.from_labels import labels_to_preprocessed_grid

    preprocessed = Path(pristine["nnUNet_preprocessed"]) / DATASET
    plans_manager = PlansManager(str(preprocessed / "nnUNetPlans.json"))
    config = copy.deepcopy(plans_manager.plans["configurations"]["3d_fullres"])
    config["spacing"] = list(target_spacing)
    configuration_manager = ConfigurationManager(config)
    dataset_json = json.loads((preprocessed / "dataset.json").read_text())

    rng = np.random.default_rng(0)
    image = np.zeros((1, 14, 22, 20), dtype=np.float32)
    image[:, 2:12, 3:19, 1:17] = rng.normal(0, 100, size=(10, 16, 16))  # zero border: nnU-Net crops it
    seg = np.zeros_like(image)
    seg[:, 3:9, 5:12, 2:10] = 1
    seg[:, 6:11, 9:17, 8:15] = 4
    seg[:, 2:4, 3:6, 12:17] = 6
    _, seg_nnunet, properties = DefaultPreprocessor(verbose=False).run_case_npy(
        image, seg, {"spacing": list(original_spacing)}, plans_manager, configuration_manager, dataset_json)
    assert properties["bbox_used_for_cropping"] != [[0, 14], [0, 22], [0, 20]]

    imported = labels_to_preprocessed_grid(seg, properties, plans_manager, configuration_manager)
    assert imported.shape == seg_nnunet.shape[1:]
    assert np.array_equal(imported, np.where(seg_nnunet[0] > 0, seg_nnunet[0], 0))

    big = np.where(seg == 4, 65535, seg)  # beyond nnU-Net's int16 segmentations, still exact here
    assert np.array_equal(labels_to_preprocessed_grid(big, properties, plans_manager, configuration_manager),
                          np.where(imported == 4, 65535, imported))


def test_unusable_dataset_or_configuration_names_the_nnunet_command(dataset):
    with pytest.raises(MaskGenerationError, match="nnUNetv2_plan_and_preprocess -d 999"):
        generate_dataset_masks(999, generator=fake_generator)
    with pytest.raises(MaskGenerationError, match="nnUNetv2_plan_and_preprocess -d 101 -c 2d"):
        generate_dataset_masks(DATASET_ID, configuration="2d", generator=fake_generator)  # planned, not preprocessed
    with pytest.raises(MaskGenerationError, match="'3d_lowres' is not in nnUNetPlans.json"):
        generate_dataset_masks(DATASET_ID, configuration="3d_lowres", generator=fake_generator)
    with pytest.raises(MaskGenerationError, match="no plans nnUNetPlansXL.json"):
        generate_dataset_masks(DATASET_ID, plans_identifier="nnUNetPlansXL", generator=fake_generator)
    with pytest.raises(MaskGenerationError, match="--from-labels"):
        generate_dataset_masks(DATASET_ID, mix_generated=False)


def test_command_line(dataset, capsys):
    from nnunet_mass.cli.generate_masks import main

    labels = str(dataset["raw"] / "labelsTr")
    main(["-d", str(DATASET_ID), "--from-labels", labels, "--labels-only", "-np", "1"])
    assert finished_cases(dataset["masks"]) == CASES
    assert "3 case(s) done" in capsys.readouterr().out

    main(["-d", str(DATASET_ID), "--from-labels", labels, "--labels-only"])
    assert "3 skipped as already finished" in capsys.readouterr().out

    (dataset["data"] / "phantom_002.b2nd").unlink()
    with pytest.raises(SystemExit) as failed:
        main(["-d", DATASET, "-c", "3d_fullres", "-p", "nnUNetPlans", "--from-labels", labels, "--labels-only",
              "--overwrite"])
    assert failed.value.code not in (0, None) and "1 case(s) failed" in str(failed.value.code)

    with pytest.raises(SystemExit) as missing:
        main(["-d", "998", "--from-labels", labels, "--labels-only"])
    assert "nnUNetv2_plan_and_preprocess" in str(missing.value.code)
    with pytest.raises(SystemExit):
        main(["-d", str(DATASET_ID), "--labels-only"])


def test_command_line_with_the_classical_generator_and_its_flags(dataset):
    pytest.importorskip("nnunet_mass.masks.classical")
    from nnunet_mass.cli.generate_masks import main

    main(["-d", str(DATASET_ID), "--max_proposals", "15"])
    stored = open_mask_stack(dataset["masks"], "phantom_000", data_shape=read_data(dataset, "phantom_000").shape)
    assert 0 < len(stored) <= 15 and stored.metadata["generator"]["settings"]["max_proposals"] == 15


def test_mixed_with_generated_masks_a_case_without_label_map_imports_nothing(dataset, tmp_path):
    """A pool of labeled and unlabeled sources: only labeled cases have a map in masksTr."""
    labels = tmp_path / "masksTr"
    shutil.copytree(dataset["raw"] / "labelsTr", labels)
    (labels / "phantom_001.nii.gz").unlink()
    report = generate_dataset_masks(DATASET_ID, from_labels=str(labels), generator=fake_generator)
    assert report.done == CASES and not report.failed
    sources = {case: {m.source for m in open_mask_stack(dataset["masks"], case).masks} for case in CASES}
    assert "labels:masksTr" in sources["phantom_000"] and "labels:masksTr" not in sources["phantom_001"]
    assert "fake_terciles" in sources["phantom_001"]
