"""Helpers shared by tests."""
import torch


def save_as_if_saved_on_gpu(obj, path) -> None:
    """torch.save, but every storage is tagged 'cuda:0' as on a GPU machine.

    Loading such a file without map_location fails on a CPU-only machine, exactly like a
    checkpoint copied from a GPU server.
    """
    import torch.serialization as serialization

    original = serialization.location_tag
    serialization.location_tag = lambda storage: "cuda:0"
    try:
        torch.save(obj, path)
    finally:
        serialization.location_tag = original


def tiny_plans_network(num_input_channels: int = 1, num_classes: int = 3, features=(4, 8, 16)):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    n = len(features)
    return PlainConvUNet(num_input_channels, n, list(features), torch.nn.Conv3d, 3, [1] + [2] * (n - 1), 1,
                         num_classes, 1, conv_bias=True, norm_op=torch.nn.InstanceNorm3d,
                         norm_op_kwargs={"affine": True}, nonlin=torch.nn.LeakyReLU)


def preprocessed_phantoms(root, dataset_id: int, name: str, num_cases: int, seed: int, shape, then=None) -> dict:
    """nnU-Net folders under `root` with a labelled phantom dataset planned and preprocessed by
    nnU-Net's Python API (3d_fullres, nnUNetPlans); `then()` runs with those folders set."""
    import os

    import pytest

    from nnunet_mass.phantoms import write_phantom_dataset
    from nnunet_mass.stock import nnunet_folders

    folders = nnunet_folders(root)
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in folders.items():
            patch.setenv(variable, value)
        if os.environ.get("nnUNet_n_proc_DA") == "0":  # the planner must not see 0 (its thread count)
            patch.delenv("nnUNet_n_proc_DA")
        from nnunetv2.experiment_planning.plan_and_preprocess_api import (extract_fingerprints, plan_experiments,
                                                                          preprocess)

        write_phantom_dataset(folders["nnUNet_raw"], dataset_id, name, num_cases=num_cases, seed=seed, shape=shape)
        extract_fingerprints([dataset_id], num_processes=1)
        plan_experiments([dataset_id])
        preprocess([dataset_id], configurations=("3d_fullres",), num_processes=(1,))
        if then is not None:
            then()
    return folders


def copy_dataset(pristine: dict, nnunet_env: dict, dataset: str) -> dict:
    """A private copy of a pristine dataset (raw and preprocessed, masks included) in a test's folders."""
    import shutil
    from pathlib import Path

    for variable in ("nnUNet_raw", "nnUNet_preprocessed"):
        shutil.copytree(Path(pristine[variable]) / dataset, Path(nnunet_env[variable]) / dataset)
    preprocessed = Path(nnunet_env["nnUNet_preprocessed"]) / dataset
    return {"raw": Path(nnunet_env["nnUNet_raw"]) / dataset, "preprocessed": preprocessed,
            "data": preprocessed / "nnUNetPlans_3d_fullres",
            "masks": preprocessed / "nnUNetPlans_3d_fullres_mass_masks"}


CPU_TINY_PLANS = "nnUNetPlans_cpuTiny"


def pretraining_phantoms(root, dataset_id: int, name: str, num_cases: int, seed: int, shape,
                         masks: bool = True) -> dict:
    """A phantom dataset under `root` planned with the cpu_tiny preset, preprocessed, and
    (with `masks`) with classical mask proposals: what a MASS pretraining run needs."""
    def preset_preprocess_and_masks():
        import os
        from pathlib import Path

        from nnunetv2.experiment_planning.plan_and_preprocess_api import preprocess
        from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

        from nnunet_mass.masks.dataset_masks import generate_dataset_masks
        from nnunet_mass.plans_presets import write_preset_plans

        folder = Path(os.environ["nnUNet_preprocessed"]) / maybe_convert_to_dataset_name(dataset_id)
        write_preset_plans(folder, "cpu_tiny")
        preprocess([dataset_id], plans_identifier=CPU_TINY_PLANS, configurations=("3d_fullres",), num_processes=(1,))
        if masks:
            generate_dataset_masks(dataset_id, "3d_fullres", CPU_TINY_PLANS, num_processes=1)

    return preprocessed_phantoms(root, dataset_id, name, num_cases, seed, shape, then=preset_preprocess_and_masks)


def read_preprocessed(dataset: dict, case: str, suffix: str = ""):
    """nnU-Net's preprocessed array `<case><suffix>.b2nd` of a `copy_dataset` dataset ("_seg" for labels)."""
    import blosc2

    return blosc2.open(str(dataset["data"] / f"{case}{suffix}.b2nd"), mode="r")[:]


PRETRAINED_DATASET_ID, PRETRAINED_DATASET = 141, "Dataset141_PretrainedPhantoms"
SHORT_PRETRAINING = {"nnUNet_MASS_num_epochs": "2", "nnUNet_MASS_num_iterations_per_epoch": "3",
                     "nnUNet_MASS_num_val_iterations_per_epoch": "2", "nnUNet_n_proc_DA": "0",
                     "nnUNet_compile": "false"}


def short_pretraining(root) -> dict:
    """A tiny MASS pretraining (cpu_tiny plans, 2 epochs x 3 iterations, fold 0) on 5 CT
    phantoms of 40^3 under `root`: its nnU-Net folders, model folder and checkpoint."""
    from pathlib import Path

    import pytest
    from nnunetv2.run.run_training import get_trainer_from_args

    folders = pretraining_phantoms(root, PRETRAINED_DATASET_ID, PRETRAINED_DATASET.split("_", 1)[1], num_cases=5,
                                   seed=21, shape=(40, 40, 40))
    with pytest.MonkeyPatch.context() as patch:
        for variable, value in {**folders, **SHORT_PRETRAINING}.items():
            patch.setenv(variable, value)
        trainer = get_trainer_from_args(str(PRETRAINED_DATASET_ID), "3d_fullres", 0, "nnUNetTrainerMASSPretrain",
                                        CPU_TINY_PLANS, device=torch.device("cpu"))
        trainer.run_training()
    model_folder = Path(trainer.output_folder).parent
    return {"folders": folders, "model_folder": model_folder,
            "checkpoint": model_folder / "fold_0" / "checkpoint_final.pth",
            "raw": Path(folders["nnUNet_raw"]) / PRETRAINED_DATASET}


def crop_image(source, target, box_zyx, spacing_xyz=None, origin_xyz=None, direction=None) -> None:
    """Write the (z, y, x) box `box_zyx` (slices) of the image `source` to `target`: by default
    with its physical position kept; spacing, origin and direction (SimpleITK's (x, y, z) order)
    replace the source's where given, for queries of another geometry."""
    import SimpleITK as sitk

    image = sitk.ReadImage(str(source))
    cropped = image[box_zyx[2], box_zyx[1], box_zyx[0]]  # SimpleITK slices (x, y, z) and moves the origin
    for value, setter in ((spacing_xyz, cropped.SetSpacing), (origin_xyz, cropped.SetOrigin),
                          (direction, cropped.SetDirection)):
        if value is not None:
            setter(tuple(float(v) for v in value))
    sitk.WriteImage(cropped, str(target))
