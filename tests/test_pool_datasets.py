"""Tests for nnUNetv2_mass_pool_datasets: several raw phantom datasets -> one pretraining pool."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mass.cli.pool_datasets import main
from nnunet_mass.phantoms import write_phantom_dataset
from nnunet_mass.unlabeled import PreparationError
from nnunet_mass.unlabeled import prepare as prepare_module
from nnunet_mass.unlabeled.pool import SOURCES_KEY, pool_datasets, source_balanced_probabilities

SHAPE = (24, 32, 32)  # (z, y, x) voxels; spacing is the phantoms' default 2.5 x 2 x 2 mm
LABELED, UNLABELED, MR = "Dataset011_LabCT", "Dataset012_UnlabCT", "Dataset013_LabMR"


@pytest.fixture
def raw(nnunet_env) -> Path:
    """nnU-Net folders with a labeled CT source (3 cases), an unlabeled CT one (2) and a labeled MR one (2)."""
    root = Path(nnunet_env["nnUNet_raw"])
    write_phantom_dataset(root, 11, "LabCT", num_cases=3, seed=1, shape=SHAPE)
    write_phantom_dataset(root, 12, "UnlabCT", num_cases=2, seed=2, shape=SHAPE, labeled=False, case_prefix="scan")
    write_phantom_dataset(root, 13, "LabMR", num_cases=2, seed=3, shape=SHAPE, modality="MR")
    return root


def read(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def visible_entries(root: Path) -> set[str]:
    return {p.name for p in root.iterdir()}


def test_pool_of_labeled_and_unlabeled_ct(raw):
    report = pool_datasets([11, UNLABELED], 101, "Pool")
    pool = raw / "Dataset101_Pool"
    assert report.dataset_folder == pool
    expected = [f"{LABELED}_phantom_{i:03d}" for i in range(3)] + [f"{UNLABELED}_scan_{i:03d}" for i in range(2)]
    assert sorted(report.sources) == expected
    assert sorted(p.name for p in (pool / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in expected]

    for case in expected:  # body masks, on the image grid
        mask = read(pool / "labelsTr" / f"{case}.nii.gz")
        assert set(np.unique(mask)) == {0, 1} and mask.shape == SHAPE

    assert report.masks == expected[:3]  # expert labels only where the source had them
    assert sorted(p.name for p in (pool / "masksTr").iterdir()) == [f"{c}.nii.gz" for c in expected[:3]]
    source_label = sitk.ReadImage(str(raw / LABELED / "labelsTr" / "phantom_001.nii.gz"))
    kept = sitk.ReadImage(str(pool / "masksTr" / f"{LABELED}_phantom_001.nii.gz"))
    image = sitk.ReadImage(str(pool / "imagesTr" / f"{LABELED}_phantom_001_0000.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(kept), sitk.GetArrayFromImage(source_label))
    assert kept.GetPixelID() == sitk.sitkUInt16
    for getter in ("GetSize", "GetSpacing", "GetOrigin", "GetDirection"):
        assert getattr(kept, getter)() == getattr(image, getter)()

    content = json.loads((pool / "dataset.json").read_text())
    assert content["numTraining"] == 5 and content["file_ending"] == ".nii.gz"
    assert content["channel_names"] == {"0": "CT"} and content["labels"] == {"background": 0, "foreground": 1}
    assert content[SOURCES_KEY] == {c: (LABELED if "phantom" in c else UNLABELED) for c in expected}
    assert visible_entries(raw) == {LABELED, UNLABELED, MR, "Dataset101_Pool"}  # no staging left

    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(pool), num_processes=1)


def test_labeled_pool_round_trips_through_nnunet_preset_and_from_labels(raw, monkeypatch):
    """pool -> fingerprint + plan -> pretrain_iso1.5mm preset -> preprocess -> masks from masksTr."""
    monkeypatch.delenv("nnUNet_n_proc_DA", raising=False)  # the planner reads it as a thread count
    from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                      preprocess)
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_mass.masks.dataset_masks import generate_dataset_masks
    from nnunet_mass.plans_presets import write_preset_plans

    pool = pool_datasets([LABELED], 101, "LabeledPool").dataset_folder
    extract_fingerprints([101], num_processes=1)
    plan_experiments([101])
    preprocessed = Path(pool.parent.parent / "nnUNet_preprocessed" / pool.name)
    copied = json.loads((preprocessed / "dataset.json").read_text())  # where the trainer will read it
    assert set(copied[SOURCES_KEY].values()) == {LABELED}
    plans_file = write_preset_plans(preprocessed, "pretrain_iso1.5mm")
    assert plans_file.name == "nnUNetPlans_pretrainIso1.5mm.json"
    plans = json.loads(plans_file.read_text())
    config = plans["configurations"]["3d_fullres"]
    assert config["spacing"] == [1.5, 1.5, 1.5] and config["patch_size"] == [128, 128, 128]
    assert config["batch_size"] == 2
    arch = config["architecture"]["arch_kwargs"]
    assert arch["strides"] == [[1, 1, 1]] + [[2, 2, 2]] * 5 and arch["kernel_sizes"] == [[3, 3, 3]] * 6
    assert arch["features_per_stage"] == [32, 64, 128, 256, 320, 320]
    manager = PlansManager(plans)
    network = nnUNetTrainer.build_network_architecture(manager, manager.get_configuration("3d_fullres"), 1, 2,
                                                       enable_deep_supervision=False)
    assert len(network.encoder.stages) == 6

    preprocess([101], plans_identifier=plans["plans_name"], configurations=("3d_fullres",), num_processes=(1,))
    report = generate_dataset_masks(101, "3d_fullres", plans["plans_name"], from_labels=str(pool / "masksTr"),
                                    mix_generated=False)
    assert report.ok and len(report.done) == 3
    for case in report.done:  # one mask per structure of the source's label map
        source_case = case[len(LABELED) + 1:]
        structures = np.unique(read(raw / LABELED / "labelsTr" / f"{source_case}.nii.gz"))
        assert report.num_masks[case] == np.count_nonzero(structures)


def test_channel_names_must_agree_unless_given(raw):
    with pytest.raises(PreparationError, match=r"(?s)differ.*Dataset011_LabCT: \['CT'\].*Dataset013_LabMR: "
                                               r"\['MR'\].*-cn"):
        pool_datasets([11, 13], 101, "Mixed")
    assert visible_entries(raw) == {LABELED, UNLABELED, MR}

    with pytest.warns(UserWarning, match=r"(?s)'image' -> ZScoreNormalization.*per-scan z-score"):
        report = pool_datasets([11, 13], 101, "Mixed", channel_names=["image"])
    content = json.loads((report.dataset_folder / "dataset.json").read_text())
    assert content["channel_names"] == {"0": "image"} and content["numTraining"] == 5
    assert len(report.masks) == 5

    with pytest.raises(PreparationError, match="-cn gives 2 channel name"):
        pool_datasets([11, 13], 102, "Mixed2", channel_names=["a", "b"])


def test_existing_id_is_refused_unless_overwrite(raw):
    pool_datasets([11], 101, "Pool")
    with pytest.raises(PreparationError, match="already exists.*--overwrite"):
        pool_datasets([12], 101, "Pool")
    report = pool_datasets([12], 101, "Pool", overwrite=True)
    assert sorted(set(report.sources.values())) == [UNLABELED]
    assert list((report.dataset_folder / "masksTr").iterdir()) == []


def test_failure_leaves_nothing_and_keeps_the_old_pool(raw, monkeypatch):
    pool_datasets([11], 101, "Pool")
    before = sorted(p.name for p in (raw / "Dataset101_Pool" / "imagesTr").iterdir())
    real_write, calls = prepare_module.write_case, []

    def failing_write(*args):
        calls.append(args[1])
        if len(calls) == 3:
            raise OSError("disk full")
        real_write(*args)

    with monkeypatch.context() as patch:
        patch.setattr(prepare_module, "write_case", failing_write)
        with pytest.raises(OSError, match="disk full"):
            pool_datasets([11, 12], 101, "Pool", overwrite=True)
    assert visible_entries(raw) == {LABELED, UNLABELED, MR, "Dataset101_Pool"}
    assert sorted(p.name for p in (raw / "Dataset101_Pool" / "imagesTr").iterdir()) == before

    (raw / UNLABELED / "dataset.json").write_text("{not json")
    with pytest.raises(PreparationError, match="not a valid nnU-Net dataset.json"):
        pool_datasets([11, 12], 102, "Pool2")
    assert "Dataset102_Pool2" not in visible_entries(raw)


def test_bad_sources_and_cases_are_explained(raw):
    with pytest.raises(PreparationError, match="not found"):
        pool_datasets([11, 99], 101, "Pool")
    with pytest.raises(PreparationError, match="more than once"):
        pool_datasets([11, LABELED], 101, "Pool")
    with pytest.raises(PreparationError, match="is that of source"):
        pool_datasets([11, 12], 11, "Pool", overwrite=True)

    # a broken image is skipped; a label on another grid is dropped but its image kept
    (raw / LABELED / "imagesTr" / "phantom_000_0000.nii.gz").write_bytes(b"not an image")
    label_file = raw / LABELED / "labelsTr" / "phantom_001.nii.gz"
    shifted = sitk.ReadImage(str(label_file))
    shifted.SetOrigin([o + 5.0 for o in shifted.GetOrigin()])
    sitk.WriteImage(shifted, str(label_file))
    report = pool_datasets([11], 101, "Pool")
    assert list(report.skipped) == [f"{LABELED}_phantom_000"] and "unreadable" in report.skipped[
        f"{LABELED}_phantom_000"]
    assert f"{LABELED}_phantom_001" in report.sources
    assert "origin" in report.label_notes[f"{LABELED}_phantom_001"]
    assert report.masks == [f"{LABELED}_phantom_002"]

    for image in (raw / UNLABELED / "imagesTr").iterdir():  # a source that loses every case is an error
        image.write_bytes(b"broken")
    with pytest.raises(PreparationError, match=f"no valid case in source.*{UNLABELED}"):
        pool_datasets([11, 12], 102, "Pool2")
    assert "Dataset102_Pool2" not in visible_entries(raw)


def test_ignore_label_and_test_images(raw):
    content = json.loads((raw / LABELED / "dataset.json").read_text())
    content["labels"]["ignore"] = 7  # phantom labels are 0..6
    (raw / LABELED / "dataset.json").write_text(json.dumps(content))
    label_file = raw / LABELED / "labelsTr" / "phantom_000.nii.gz"
    label = sitk.ReadImage(str(label_file))
    values = sitk.GetArrayFromImage(label)
    values[:, :4] = 7
    relabeled = sitk.GetImageFromArray(values)
    relabeled.CopyInformation(label)
    sitk.WriteImage(relabeled, str(label_file))
    (raw / LABELED / "imagesTs").mkdir()
    (raw / LABELED / "labelsTs").mkdir()
    for folder, name in (("imagesTs", "test_000_0000.nii.gz"), ("labelsTs", "test_000.nii.gz")):
        src = raw / LABELED / folder.replace("Ts", "Tr") / name.replace("test", "phantom")
        (raw / LABELED / folder / name).write_bytes(src.read_bytes())

    assert len(pool_datasets([11], 101, "TrOnly").sources) == 3
    report = pool_datasets([11], 102, "WithTest", include_test=True)
    assert f"{LABELED}_test_000" in report.sources
    assert f"{LABELED}_test_000" not in report.masks  # test labels are never used
    kept = read(report.dataset_folder / "masksTr" / f"{LABELED}_phantom_000.nii.gz")
    assert not np.any(kept[:, :4]) and kept.max() <= 6


def test_source_balanced_probabilities():
    sources = {"a0": "A", **{f"b{i}": "B" for i in range(4)}}
    cases = ["a0", "b0", "b1", "b2", "b3"]
    p = source_balanced_probabilities({SOURCES_KEY: sources}, cases)  # A: 1**0.5 = 1, B: 4**0.5 = 2
    np.testing.assert_allclose(p, [1 / 3] + [1 / 6] * 4)
    np.testing.assert_allclose(source_balanced_probabilities({SOURCES_KEY: sources}, cases, exponent=1.0),
                               [0.2] * 5)
    np.testing.assert_allclose(source_balanced_probabilities({SOURCES_KEY: sources}, cases, exponent=0.0),
                               [0.5] + [0.125] * 4)
    # only the cases asked for count (a training split), and unmapped cases are one source "unknown"
    weights = np.array([1, 1, np.sqrt(2) / 2, np.sqrt(2) / 2])  # A: 1 case, B: 1 case, unknown: 2 cases
    np.testing.assert_allclose(source_balanced_probabilities({SOURCES_KEY: sources}, ["a0", "b0", "x", "y"]),
                               weights / weights.sum())
    assert source_balanced_probabilities({}, cases) is None
    assert source_balanced_probabilities({SOURCES_KEY: sources}, ["b0", "b1"]) is None
    assert source_balanced_probabilities({SOURCES_KEY: {}}, cases) is None


def test_cli_runs_and_reports_errors(raw, capsys):
    main(["-d", "11", "12", "-o", "101", "-n", "CliPool", "-np", "2"])
    content = json.loads((raw / "Dataset101_CliPool" / "dataset.json").read_text())
    assert content["numTraining"] == 5 and len(set(content[SOURCES_KEY].values())) == 2
    with pytest.raises(SystemExit, match="nnUNetv2_mass_pool_datasets: error: .*already exists"):
        main(["-d", "11", "-o", "101", "-n", "CliPool"])
    with pytest.raises(SystemExit):
        main(["-d", "11"])  # -o and -n are required
    assert "-o" in capsys.readouterr().err
