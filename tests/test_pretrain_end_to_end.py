"""The user story of pretraining through stock commands, in subprocesses: masks ->
nnUNetv2_train -tr nnUNetTrainerMASSPretrain -> nnUNetv2_train -tr nnUNetTrainerMASSFinetune
-pretrained_weights -> nnUNetv2_predict."""
from pathlib import Path

import pytest
import SimpleITK as sitk
import torch

from nnunet_mass.demo import plan_and_preprocess
from nnunet_mass.stock import cpu_environment, run_stock, train_on_cpu

pytestmark = pytest.mark.slow

DATASET, NAME = 211, "Dataset211_PretrainEndToEnd"
SHORT = {"nnUNet_MASS_num_epochs": "2", "nnUNet_MASS_num_iterations_per_epoch": "3",
         "nnUNet_MASS_num_val_iterations_per_epoch": "2"}


def test_pretrain_then_fine_tune_and_predict_with_stock_commands(tmp_path):
    from nnunet_mass.phantoms import write_phantom_dataset

    env = cpu_environment(tmp_path, SHORT)
    env.pop("nnUNet_extTrainer", None)  # the subprocesses must find our trainers on their own
    write_phantom_dataset(env["nnUNet_raw"], DATASET, NAME.split("_", 1)[1], num_cases=5, seed=5,
                          shape=(40, 48, 48))
    log = tmp_path / "commands.log"
    plans = plan_and_preprocess(DATASET, "cpu_tiny", env, log)
    with pytest.raises(RuntimeError, match="nnUNetv2_mass_generate_masks -d " + NAME):
        train_on_cpu([DATASET, "3d_fullres", 0, "-tr", "nnUNetTrainerMASSPretrain", "-p", plans], env)
    run_stock("nnUNetv2_mass_generate_masks", ["-d", DATASET, "-c", "3d_fullres", "-p", plans, "-np", 1], env, log)

    train_on_cpu([DATASET, "3d_fullres", 0, "-tr", "nnUNetTrainerMASSPretrain", "-p", plans], env, log)
    results = Path(env["nnUNet_results"]) / NAME
    pretrained = results / f"nnUNetTrainerMASSPretrain__{plans}__3d_fullres" / "fold_0"
    assert (pretrained / "validation" / "summary.json").is_file() and (pretrained / "progress.png").is_file()

    train_on_cpu([DATASET, "3d_fullres", 1, "-tr", "nnUNetTrainerMASSFinetune", "-p", plans,
                  "-pretrained_weights", pretrained / "checkpoint_final.pth"], env, log)
    assert "Loaded pretrained weights from" in log.read_text()
    finetuned = results / f"nnUNetTrainerMASSFinetune__{plans}__3d_fullres" / "fold_1" / "checkpoint_final.pth"
    ema = torch.load(pretrained / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    tuned = torch.load(finetuned, map_location="cpu", weights_only=False)["network_weights"]
    assert set(k for k in tuned if ".seg_layers." not in k) <= set(ema)

    images = Path(env["nnUNet_raw"]) / NAME / "imagesTr"
    run_stock("nnUNetv2_predict", ["-i", images, "-o", tmp_path / "pred", "-d", DATASET, "-c", "3d_fullres",
                                   "-f", 1, "-tr", "nnUNetTrainerMASSFinetune", "-p", plans, "-device", "cpu",
                                   "-npp", 1, "-nps", 1, "--disable_tta"], env, log)
    predictions = sorted((tmp_path / "pred").glob("*.nii.gz"))
    assert len(predictions) == 5
    assert sitk.ReadImage(str(predictions[0])).GetSize() == sitk.ReadImage(
        str(images / predictions[0].name.replace(".nii.gz", "_0000.nii.gz"))).GetSize()
