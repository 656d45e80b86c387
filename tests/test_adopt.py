"""nnUNetv2_mass_adopt: one pretrained model, many fine-tuning datasets, each with its own shape and spacing."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_mass.bundles.adopt import adopt
from nnunet_mass.bundles.compatibility import AdoptionError, TargetDataset, channel_problems
from nnunet_mass.bundles.source import PretrainedSource
from nnunet_mass.bundles.target_plans import ADOPTED_KEY
from nnunet_mass.cli.adopt import main as adopt_main
from nnunet_mass.phantoms import write_phantom_dataset

PRETRAINED_PLANS = "nnUNetPlans_cpuTiny"
ADOPTED_PLANS = "nnUNetPlans_cpuTiny_MASS141"
DATA = f"{ADOPTED_PLANS}_3d_fullres"


def entries(root) -> list[str]:
    """Everything under `root`, hidden staging folders included."""
    return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


def write_2d_dataset(raw_root: Path, dataset_id: int, name: str) -> None:
    """Two 2D CT slices as .nii.gz: readable by nnU-Net, but nothing a 3D configuration can train on."""
    folder = raw_root / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for case in ("slice_000", "slice_001"):
        image = sitk.GetImageFromArray(rng.normal(40, 20, (40, 40)).astype(np.float32))
        sitk.WriteImage(image, str(folder / "imagesTr" / f"{case}_0000.nii.gz"))
        label = sitk.GetImageFromArray(np.ones((40, 40), np.uint8))
        sitk.WriteImage(label, str(folder / "labelsTr" / f"{case}.nii.gz"))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "x": 1},
                                                     "numTraining": 2, "file_ending": ".nii.gz"}))


def test_mr_target_of_a_ct_model_is_refused_before_any_work(mass_pretraining, nnunet_env):
    write_phantom_dataset(nnunet_env["nnUNet_raw"], 152, "TargetMR", num_cases=2, seed=1, shape=(36, 36, 36),
                          modality="MR")
    with pytest.raises(SystemExit, match=r"(?s)nnUNetv2_mass_adopt: error: Dataset152_TargetMR cannot be fine-tuned"
                                         r".*channel 0: the pretraining saw 'CT' \(CTNormalization\), "
                                         r"Dataset152_TargetMR has 'MR' \(ZScoreNormalization.*rename it 'CT'"):
        adopt_main(["-m", str(mass_pretraining["model_folder"]), "-d", "152", "-np", "1"])
    assert entries(nnunet_env["nnUNet_preprocessed"]) == []


def test_2d_target_is_refused_before_preprocessing(mass_pretraining, nnunet_env):
    write_2d_dataset(Path(nnunet_env["nnUNet_raw"]), 153, "Slices")
    with pytest.raises(AdoptionError, match=r"slice_000_0000.nii.gz is 2D \(shape \[1, 40, 40\]\), but the pretrained "
                                            r"configuration 3d_fullres is 3D.*2d configuration"):
        adopt(mass_pretraining["model_folder"], 153, num_processes=1)
    dataset_json = Path(nnunet_env["nnUNet_raw"]) / "Dataset153_Slices" / "dataset.json"
    dataset_json.write_text(dataset_json.read_text().replace(".nii.gz", ".png"))
    with pytest.raises(AdoptionError, match="file_ending .png is a 2D image format"):
        adopt(mass_pretraining["model_folder"], 153, num_processes=1)
    assert entries(nnunet_env["nnUNet_preprocessed"]) == []


def test_channel_count_and_missing_keys_are_explained(mass_pretraining, nnunet_env):
    folder = write_phantom_dataset(nnunet_env["nnUNet_raw"], 154, "TwoChannels", num_cases=1, seed=1,
                                   shape=(24, 24, 24))
    content = json.loads((folder / "dataset.json").read_text())
    content["channel_names"] = {"0": "CT", "1": "CT"}
    (folder / "dataset.json").write_text(json.dumps(content))
    with pytest.raises(AdoptionError, match=r"takes 1 input channel\(s\) \['CT'\], Dataset154_TwoChannels has 2"):
        adopt(mass_pretraining["model_folder"], 154)
    del content["file_ending"]
    (folder / "dataset.json").write_text(json.dumps(content))
    with pytest.raises(AdoptionError, match="dataset.json lacks file_ending"):
        adopt(mass_pretraining["model_folder"], 154)
    with pytest.raises(SystemExit, match="neither a pretrained-model bundle"):
        adopt_main(["-m", str(Path(nnunet_env["nnUNet_raw"]) / "missing.zip"), "-d", "154"])
    assert entries(nnunet_env["nnUNet_preprocessed"]) == []


def test_channels_are_compared_by_what_nnunet_does_with_them(mass_pretraining):
    plans = json.loads((mass_pretraining["model_folder"] / "plans.json").read_text())
    plans["configurations"]["3d_fullres"]["normalization_schemes"] = ["ZScoreNormalization"]
    source = PretrainedSource(plans, {"channel_names": {"0": "T1"}}, "3d_fullres", Path("model.zip"))

    def problems(name):
        return channel_problems(source, TargetDataset(102, "Dataset102_X", Path("raw"), {"channel_names": {"0": name}}))

    assert problems("t1") == ([], [])
    errors, warnings = problems("T2")  # another name, the same z-score: fine, but said
    assert errors == [] and "channel 0 is 'T2' here and 'T1' in the pretraining; both use ZScoreNormalization" in \
        warnings[0]
    errors, _ = problems("CT")
    assert "has 'CT' (CTNormalization in nnU-Net)" in errors[0]


@pytest.fixture(scope="module")
def adopted(mass_pretraining, tmp_path_factory):
    """Dataset155 (36^3 CT phantoms at 2 mm) adopted from the pretraining's model folder, in private folders."""
    from nnunet_mass.stock import nnunet_folders

    folders = nnunet_folders(tmp_path_factory.mktemp("adopted"))
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in folders.items():
            patch.setenv(variable, value)
        write_phantom_dataset(folders["nnUNet_raw"], 155, "TargetA", num_cases=2, seed=7, shape=(36, 36, 36),
                              spacing=(2.0, 2.0, 2.0))
        result = adopt(mass_pretraining["model_folder"], 155, num_processes=1)
    return {"folders": folders, "result": result,
            "preprocessed": Path(folders["nnUNet_preprocessed"]) / result.dataset_name}


def test_adopted_plans_are_the_pretrainings_with_the_targets_intensities(mass_pretraining, adopted):
    pretraining = json.loads((mass_pretraining["model_folder"] / "plans.json").read_text())
    folder = adopted["preprocessed"]
    plans = json.loads((folder / f"{ADOPTED_PLANS}.json").read_text())
    fingerprint = json.loads((folder / "dataset_fingerprint.json").read_text())

    assert plans["dataset_name"] == "Dataset155_TargetA" and plans["plans_name"] == ADOPTED_PLANS
    assert plans["transpose_forward"] == pretraining["transpose_forward"]
    configuration = dict(plans["configurations"]["3d_fullres"])
    assert configuration.pop("data_identifier") == DATA
    expected = dict(pretraining["configurations"]["3d_fullres"])
    expected.pop("data_identifier")
    assert configuration == expected  # architecture, patch size, spacing, normalisation: all the pretraining's
    ours = plans["foreground_intensity_properties_per_channel"]
    assert ours == fingerprint["foreground_intensity_properties_per_channel"]
    assert ours != pretraining["foreground_intensity_properties_per_channel"]
    assert plans[ADOPTED_KEY]["dataset_name"] == "Dataset141_PretrainedPhantoms"

    raw = Path(adopted["folders"]["nnUNet_raw"]) / "Dataset155_TargetA"
    assert (folder / "dataset.json").read_text() == (raw / "dataset.json").read_text()
    assert sorted(p.name for p in (folder / "gt_segmentations").iterdir()) == ["phantom_000.nii.gz",
                                                                             "phantom_001.nii.gz"]
    import blosc2

    # 36 voxels of 2 mm along z, resampled to the pretraining's 2.5 mm: 29 slices; y and x stay at 2 mm
    assert blosc2.open(str(folder / DATA / "phantom_000.b2nd"), mode="r").shape == (1, 29, 36, 36)
    assert not list(Path(adopted["folders"]["nnUNet_preprocessed"]).glob(".*"))  # no staging left over
    assert adopted["result"].train_command == (
        f"nnUNetv2_train 155 3d_fullres 0 -tr nnUNetTrainerMASSFinetune -p {ADOPTED_PLANS} "
        f"-pretrained_weights {mass_pretraining['checkpoint']}")


def test_existing_plans_are_kept_unless_overwrite_and_a_failed_overwrite_changes_nothing(
        mass_pretraining, adopted, monkeypatch):
    from nnunetv2.experiment_planning import plan_and_preprocess_api

    for variable, value in adopted["folders"].items():
        monkeypatch.setenv(variable, value)
    before = {p: p.read_bytes() for p in adopted["preprocessed"].rglob("*") if p.is_file()}
    with pytest.raises(SystemExit, match=f"{ADOPTED_PLANS}.json already exists: pass --overwrite"):
        adopt_main(["-m", str(mass_pretraining["model_folder"]), "-d", "155", "-np", "1"])

    def broken_preprocessing(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(plan_and_preprocess_api, "preprocess_dataset", broken_preprocessing)
    with pytest.raises(AdoptionError, match="preprocessing failed for Dataset155_TargetA: OSError: disk full"):
        adopt(mass_pretraining["model_folder"], 155, num_processes=1, overwrite=True)
    after = {p: p.read_bytes() for p in adopted["preprocessed"].rglob("*") if p.is_file()}
    assert after == before
    assert not list(Path(adopted["folders"]["nnUNet_preprocessed"]).glob(".*"))


@pytest.mark.slow
def test_two_datasets_fine_tune_from_one_bundle_with_stock_commands(mass_pretraining, tmp_path, monkeypatch):
    """36^3 at 2 mm and 48x40x40 at 1.5 mm adopt one bundle, then stock train (-pretrained_weights model.zip)
    and stock predict run on each."""
    from nnunet_mass.cli.export_pretrained import main as export_main
    from nnunet_mass.stock import cpu_environment, run_stock, train_on_cpu

    bundle = tmp_path / "model.zip"
    for variable, value in mass_pretraining["folders"].items():
        monkeypatch.setenv(variable, value)
    export_main(["-d", "141", "-p", PRETRAINED_PLANS, "-o", str(bundle)])

    env = cpu_environment(tmp_path / "work", {"nnUNet_MASS_num_epochs": "1",
                                              "nnUNet_MASS_num_iterations_per_epoch": "2",
                                              "nnUNet_MASS_num_val_iterations_per_epoch": "1"})
    env.pop("nnUNet_extTrainer", None)  # the subprocesses must find our trainer on their own
    for variable in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results"):
        monkeypatch.setenv(variable, env[variable])
    targets = {161: ("SmallIso2mm", (36, 36, 36), (2.0, 2.0, 2.0)), 162: ("Larger1p5mm", (48, 40, 40), (1.5, 1.5, 1.5))}
    log = tmp_path / "commands.log"
    for dataset_id, (name, shape, spacing) in targets.items():  # ids 161, 162: the n-th load is the n-th dataset
        write_phantom_dataset(env["nnUNet_raw"], dataset_id, name, num_cases=5, seed=dataset_id, shape=shape,
                              spacing=spacing)
        adopt_main(["-m", str(bundle), "-d", str(dataset_id), "-np", "1"])
        train_on_cpu([dataset_id, "3d_fullres", 0, "-tr", "nnUNetTrainerMASSFinetune", "-p", ADOPTED_PLANS,
                      "-pretrained_weights", bundle], env, log)
        assert log.read_text().count(f"Loaded pretrained weights from {bundle}:") == dataset_id - 160

        raw = Path(env["nnUNet_raw"]) / f"Dataset{dataset_id}_{name}"
        single = tmp_path / f"input_{dataset_id}"
        single.mkdir()
        shutil.copy(raw / "imagesTr" / "phantom_000_0000.nii.gz", single)
        run_stock("nnUNetv2_predict", ["-i", single, "-o", tmp_path / f"pred_{dataset_id}", "-d", dataset_id,
                                       "-c", "3d_fullres", "-f", 0, "-tr", "nnUNetTrainerMASSFinetune",
                                       "-p", ADOPTED_PLANS, "-device", "cpu", "-npp", 1, "-nps", 1, "--disable_tta"],
                  env, log)
        image = sitk.ReadImage(str(single / "phantom_000_0000.nii.gz"))
        prediction = sitk.ReadImage(str(tmp_path / f"pred_{dataset_id}" / "phantom_000.nii.gz"))
        assert prediction.GetSize() == image.GetSize() == shape[::-1]
        assert np.allclose(prediction.GetSpacing(), spacing)
    plans = [json.loads((Path(env["nnUNet_preprocessed"]) / f"Dataset{i}_{n}" / f"{ADOPTED_PLANS}.json").read_text())
             for i, (n, _, _) in targets.items()]
    assert plans[0]["configurations"]["3d_fullres"]["patch_size"] == [32, 32, 32]
    assert plans[0]["configurations"] == plans[1]["configurations"]


def test_the_pretrainings_intensities_can_be_kept(mass_pretraining):
    from nnunet_mass.bundles.source import open_pretrained_source
    from nnunet_mass.bundles.target_plans import adopted_plans

    source = open_pretrained_source(mass_pretraining["model_folder"])
    fingerprint = {"foreground_intensity_properties_per_channel": {"0": {"mean": 80.0, "std": 20.0}}}
    kept = adopted_plans(source, "Dataset155_TargetA", "P", fingerprint, "SimpleITKIO", pretraining_intensities=True)
    assert kept["foreground_intensity_properties_per_channel"] == \
        source.plans["foreground_intensity_properties_per_channel"]
    targets = adopted_plans(source, "Dataset155_TargetA", "P", fingerprint, "SimpleITKIO")
    assert targets["foreground_intensity_properties_per_channel"] == {"0": {"mean": 80.0, "std": 20.0}}
