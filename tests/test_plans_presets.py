import json

import pytest
import torch

from nnunet_mass.plans_presets import (apply_preset, load_preset, stage_strides_and_kernels,
                                       write_preset_plans)


def _planned(spacing=(2.5, 2.0, 2.0)):
    """The parts of an nnU-Net 2.8 plans file that presets touch, as the default planner writes them."""
    arch = {"n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320],
            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 5,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4, "n_conv_per_stage": [2] * 5,
            "n_conv_per_stage_decoder": [2] * 4, "conv_bias": True}
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": 2, "patch_size": [64, 64, 64], "spacing": list(spacing),
              "architecture": {"network_class_name":
                               "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                               "arch_kwargs": arch, "_kw_requires_import": ["conv_op"]}}
    return {"dataset_name": "Dataset102_X", "plans_name": "nnUNetPlans",
            "configurations": {"3d_fullres": config, "2d": {"patch_size": [64, 64]}}}


def test_shipped_cpu_tiny_preset_builds_a_network_nnunet_can_run():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    derived = apply_preset(_planned(), load_preset("cpu_tiny"))
    assert derived["plans_name"] == "nnUNetPlans_cpuTiny"
    assert list(derived["configurations"]) == ["3d_fullres"]
    config = derived["configurations"]["3d_fullres"]
    assert config["data_identifier"] == "nnUNetPlans_cpuTiny_3d_fullres"
    assert config["spacing"] == [2.5, 2.0, 2.0]
    plans_manager = PlansManager(derived)
    net = nnUNetTrainer.build_network_architecture(
        plans_manager, plans_manager.get_configuration("3d_fullres"), 1, 3, enable_deep_supervision=False)
    out = net(torch.zeros(1, 1, *config["patch_size"]))
    assert out.shape == (1, 3, 32, 32, 32)
    assert sum(p.numel() for p in net.parameters()) < 500_000


def test_anisotropic_spacing_keeps_thick_slices_undownsampled_first():
    strides, kernels = stage_strides_and_kernels([16, 64, 64], [5.0, 1.0, 1.0], 4)
    assert strides[1] == [1, 2, 2] and kernels[0] == [1, 3, 3]
    assert kernels[-1] == [3, 3, 3]


def test_patch_too_small_or_indivisible_is_refused():
    with pytest.raises(ValueError, match="too small"):
        stage_strides_and_kernels([8, 8, 8], [1, 1, 1], 4)
    with pytest.raises(ValueError, match="divisible"):
        stage_strides_and_kernels([36, 32, 32], [1, 1, 1], 4)


def test_stage_lists_must_match_depth():
    preset = {"plans_name": "p", "features_per_stage": [8, 16, 32], "blocks_per_stage": [1, 1]}
    with pytest.raises(ValueError, match="blocks_per_stage"):
        apply_preset(_planned(), preset)


def test_write_preset_plans_next_to_the_planned_file(tmp_path):
    (tmp_path / "nnUNetPlans.json").write_text(json.dumps(_planned()))
    target = write_preset_plans(tmp_path, "cpu_tiny")
    assert target == tmp_path / "nnUNetPlans_cpuTiny.json"
    assert json.loads(target.read_text())["configurations"]["3d_fullres"]["patch_size"] == [32, 32, 32]


def test_missing_plans_and_unknown_preset_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="nnUNetv2_plan_experiment"):
        write_preset_plans(tmp_path, "cpu_tiny")
    with pytest.raises(FileNotFoundError, match="cpu_tiny"):
        load_preset("no_such_preset")
