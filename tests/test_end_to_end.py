"""Train and predict through the stock nnU-Net commands, in subprocesses, as a user would."""
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from helpers import save_as_if_saved_on_gpu
from nnunet_mass.demo import plan_and_preprocess
from nnunet_mass.stock import cpu_environment, run_stock, train_on_cpu

pytestmark = pytest.mark.slow

DATASET = 201
TRAINER = "nnUNetTrainerMASSFinetune"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A 5-case phantom dataset, planned with cpu_tiny and trained briefly on fold 0."""
    from nnunet_mass.phantoms import write_phantom_dataset

    workdir = tmp_path_factory.mktemp("e2e")
    env = cpu_environment(workdir, {"nnUNet_MASS_num_epochs": "2", "nnUNet_MASS_num_iterations_per_epoch": "4",
                                    "nnUNet_MASS_num_val_iterations_per_epoch": "2"})
    env.pop("nnUNet_extTrainer", None)  # the subprocesses must find our trainer on their own
    write_phantom_dataset(env["nnUNet_raw"], DATASET, "EndToEnd", num_cases=5, seed=3, shape=(40, 48, 48))
    log = workdir / "commands.log"
    plans = plan_and_preprocess(DATASET, "cpu_tiny", env, log)
    train_on_cpu([DATASET, "3d_fullres", 0, "-tr", TRAINER, "-p", plans], env, log)
    results = Path(env["nnUNet_results"]) / "Dataset201_EndToEnd" / f"{TRAINER}__{plans}__3d_fullres"
    return {"env": env, "plans": plans, "results": results, "log": log, "workdir": workdir}


def _predict(trained, trainer, output):
    images = Path(trained["env"]["nnUNet_raw"]) / "Dataset201_EndToEnd" / "imagesTr"
    run_stock("nnUNetv2_predict", ["-i", images, "-o", output, "-d", DATASET, "-c", "3d_fullres", "-f", 0,
                                   "-tr", trainer, "-p", trained["plans"], "-device", "cpu", "-npp", 1,
                                   "-nps", 1, "--disable_tta"], trained["env"], trained["log"])
    return images


def test_training_writes_a_stock_checkpoint(trained):
    checkpoint = torch.load(trained["results"] / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    assert checkpoint["trainer_name"] == TRAINER
    assert checkpoint["current_epoch"] == 2
    assert all(".seg_layers." in k or k.startswith(("encoder.", "decoder.")) for k in checkpoint["network_weights"])
    assert (trained["results"] / "fold_0" / "progress.png").is_file()
    assert (trained["results"] / "fold_0" / "validation" / "summary.json").is_file()


def test_stock_predict_keeps_the_input_geometry(trained, tmp_path):
    images = _predict(trained, TRAINER, tmp_path / "pred")
    inputs = sorted(images.glob("*_0000.nii.gz"))
    assert len(inputs) == 5
    for image_file in inputs:
        image = sitk.ReadImage(str(image_file))
        prediction = sitk.ReadImage(str(tmp_path / "pred" / image_file.name.replace("_0000", "")))
        assert prediction.GetSize() == image.GetSize()
        assert np.allclose(prediction.GetSpacing(), image.GetSpacing())
        assert np.allclose(prediction.GetOrigin(), image.GetOrigin())
        assert np.allclose(prediction.GetDirection(), image.GetDirection())
        assert set(np.unique(sitk.GetArrayFromImage(prediction))) <= set(range(7))


def test_checkpoint_renamed_to_the_stock_trainer_predicts_the_same(trained, tmp_path):
    """The network is exactly the plans' network: stock nnUNetTrainer can use the checkpoint."""
    stock_folder = trained["results"].parent / f"nnUNetTrainer__{trained['plans']}__3d_fullres"
    shutil.copytree(trained["results"], stock_folder, dirs_exist_ok=True)
    checkpoint_file = stock_folder / "fold_0" / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    checkpoint["trainer_name"] = "nnUNetTrainer"
    torch.save(checkpoint, checkpoint_file)
    _predict(trained, TRAINER, tmp_path / "ours")
    _predict(trained, "nnUNetTrainer", tmp_path / "stock")
    for ours in sorted((tmp_path / "ours").glob("*.nii.gz")):
        stock = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "stock" / ours.name)))
        assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(ours))), stock)


def test_pretrained_weights_saved_on_a_gpu_fine_tune_on_cpu(trained):
    """Stock `-pretrained_weights` with a checkpoint whose tensors say 'cuda:0'."""
    if torch.cuda.is_available():
        pytest.skip("the point is a machine without CUDA")
    checkpoint = torch.load(trained["results"] / "fold_0" / "checkpoint_final.pth", map_location="cpu",
                            weights_only=False)
    gpu_file = trained["workdir"] / "from_gpu.pth"
    save_as_if_saved_on_gpu(checkpoint, gpu_file)
    env = dict(trained["env"], nnUNet_MASS_num_epochs="1")
    train_on_cpu([DATASET, "3d_fullres", 1, "-tr", TRAINER, "-p", trained["plans"],
                                 "-pretrained_weights", gpu_file], env, trained["log"])
    assert "Loaded pretrained weights from" in trained["log"].read_text()
    assert (trained["results"] / "fold_1" / "checkpoint_final.pth").is_file()
