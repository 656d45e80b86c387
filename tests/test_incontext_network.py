import pytest
import torch
from torch import nn

from nnunet_mass.networks.backbone import decoder_features
from nnunet_mass.networks.incontext import InContextNetwork, build_incontext_network
from nnunet_mass.networks.task_encoder import adaptive_pool, masked_cell_pool
from tests.helpers import tiny_plans_network


def _resenc_network(conv_op=nn.Conv3d, norm_op=nn.InstanceNorm3d):
    from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet

    return ResidualEncoderUNet(1, 3, [4, 8, 16], conv_op, 3, [1, 2, 2], [1, 1, 1], 2, 1, conv_bias=True,
                               norm_op=norm_op, norm_op_kwargs={"affine": True}, nonlin=nn.LeakyReLU)


def _incontext(make=tiny_plans_network, seed=0, **options):
    torch.manual_seed(seed)
    return InContextNetwork(make(), token_dim=16, num_learned_tokens=3, token_grid=2, task_blocks=1, **options)


def _masks(b, k, size, seed=1):
    generator = torch.Generator().manual_seed(seed)
    return (torch.rand(b, k, *size, generator=generator) > 0.7).float()


def _image(b, size, seed=2):
    return torch.randn(b, 1, *size, generator=torch.Generator().manual_seed(seed))


def _non_mass(state):
    return {k: v for k, v in state.items() if not k.startswith("mass.")}


def test_decoder_features_are_the_plans_decoder_before_its_seg_layer():
    torch.manual_seed(0)
    net = tiny_plans_network().eval()
    x = _image(1, (16, 16, 16))
    with torch.no_grad():
        features = decoder_features(net.decoder, net.encoder(x))
        expected = net(x)
        assert [f.shape[1:] for f in features] == [(8, 8, 8, 8), (4, 16, 16, 16)]
        assert torch.allclose(net.decoder.seg_layers[-1](features[-1]), expected, atol=1e-6)


@pytest.mark.parametrize("make", [tiny_plans_network, _resenc_network], ids=["plain", "resenc"])
def test_pretraining_weights_load_into_a_plain_network_with_nnunets_loader(make, tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights

    incontext = _incontext(make, seed=0)
    assert all(p.requires_grad for p in incontext.mass.parameters())
    weights = _non_mass(incontext.state_dict())
    torch.save({"network_weights": weights}, tmp_path / "checkpoint_final.pth")
    torch.manual_seed(123)  # a different initialisation, so equality proves the transfer
    plain = make()
    load_pretrained_weights(plain, str(tmp_path / "checkpoint_final.pth"))
    target = {k: v for k, v in plain.state_dict().items() if ".seg_layers." not in k}
    assert set(target) == set(weights)
    assert any(k.startswith("decoder.stages.") for k in target)
    for key, value in target.items():
        assert torch.equal(value, weights[key]), key


def _tiny_plans_manager():
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_mass.plans_presets import apply_preset, load_preset

    arch = {"n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320],
            "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 5,
            "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4, "n_conv_per_stage": [2] * 5,
            "n_conv_per_stage_decoder": [2] * 4, "conv_bias": True,
            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
            "norm_op_kwargs": {"eps": 1e-5, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
            "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}
    config = {"data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor",
              "batch_size": 2, "patch_size": [64, 64, 64], "spacing": [1.0, 1.0, 1.0],
              "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                               "arch_kwargs": arch,
                               "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}}
    planned = {"dataset_name": "Dataset999_X", "plans_name": "nnUNetPlans", "configurations": {"3d_fullres": config}}
    return PlansManager(apply_preset(planned, load_preset("cpu_tiny")))


def test_built_from_plans_it_owns_the_network_nnunet_builds(tmp_path):
    from nnunetv2.run.load_pretrained_weights import load_pretrained_weights
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    plans_manager = _tiny_plans_manager()
    configuration = plans_manager.get_configuration("3d_fullres")
    incontext = build_incontext_network(plans_manager, configuration, 1, token_dim=16, task_blocks=1)
    stock = nnUNetTrainer.build_network_architecture(plans_manager, configuration, 1, 5, enable_deep_supervision=True)
    weights = _non_mass(incontext.state_dict())
    assert set(weights) == {k for k in stock.state_dict() if ".seg_layers." not in k}
    torch.save({"network_weights": weights}, tmp_path / "checkpoint_final.pth")
    load_pretrained_weights(stock, str(tmp_path / "checkpoint_final.pth"))
    logits = incontext(_image(1, (16, 16, 16)), _image(1, (16, 16, 16), seed=3), _masks(1, 2, (16, 16, 16)))
    assert logits.shape == (1, 2, 16, 16, 16)


def test_output_has_one_map_per_task_at_any_query_and_reference_size():
    net = _incontext().eval()
    reference, masks = _image(2, (24, 16, 16)), _masks(2, 3, (24, 16, 16))
    with torch.no_grad():
        tokens = net.encode_tasks(reference, masks)
        assert tokens.shape == (2, 3, 3, 4, 16)  # (B, K, stages, T = 3 learned + 1, d)
        for size in [(16, 16, 16), (8, 24, 16)]:
            query = _image(2, size)
            assert net.segment(query, tokens).shape == (2, 3, *size)
            assert net(query, reference, masks).shape == (2, 3, *size)
        query = _image(2, (24, 16, 16))  # same shape as the reference: one batched encoder call
        assert torch.allclose(net(query, reference, masks), net.segment(query, tokens), atol=1e-5)


def test_a_2d_backbone_works_too():
    net = _incontext(lambda: _resenc_network(nn.Conv2d, nn.InstanceNorm2d)).eval()
    with torch.no_grad():
        logits = net(_image(2, (16, 24)), _image(2, (20, 20)), _masks(2, 4, (20, 20)))
    assert logits.shape == (2, 4, 16, 24)


def test_tasks_do_not_change_each_others_logits():
    net = _incontext(_resenc_network).eval()
    query, reference, masks = _image(1, (16, 16, 16)), _image(1, (16, 16, 16), seed=3), _masks(1, 4, (16, 16, 16))
    order = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        together = net(query, reference, masks)
        alone = net(query, reference, masks[:, 1:2])
        permuted = net(query, reference, masks[:, order])
    assert torch.allclose(together[:, 1:2], alone, atol=1e-5)
    assert torch.allclose(together[:, order], permuted, atol=1e-5)


def test_empty_mask_is_finite_and_every_parameter_gets_a_gradient():
    net = _incontext(_resenc_network).train()
    masks = _masks(2, 3, (16, 16, 16))
    masks[:, 0] = 0
    logits = net(_image(2, (16, 16, 16)), _image(2, (16, 16, 16), seed=3), masks)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert sum(p.numel() for p in net.decoder.seg_layers.parameters()) == 0
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert not missing
    assert all(torch.isfinite(p.grad).all() for p in net.parameters())
    for part in ("encoder.", "decoder.stages.", "decoder.transpconvs.", "mass."):
        assert any(name.startswith(part) for name, _ in net.named_parameters()), part


def test_forward_without_reference_says_how_to_use_the_network():
    net = _incontext()
    with pytest.raises(TypeError, match="this is a MASS pretraining network: use nnUNetv2_mass_incontext, or "
                                        "fine-tune it with -tr nnUNetTrainerMASSFinetune -pretrained_weights"):
        net(_image(1, (16, 16, 16)))


def test_average_of_identical_token_sets_is_those_tokens():
    net = _incontext().eval()
    with torch.no_grad():
        tokens = net.encode_tasks(_image(1, (16, 16, 16)), _masks(1, 2, (16, 16, 16)))
        other = net.encode_tasks(_image(1, (24, 8, 16)), _masks(1, 2, (24, 8, 16)))
    assert other.shape == tokens.shape  # any reference size: averageable
    assert torch.allclose(InContextNetwork.average_tasks([tokens, tokens.clone(), tokens.clone()]), tokens)
    with pytest.raises(ValueError, match="one shape"):
        InContextNetwork.average_tasks([tokens, tokens[:, :1]])


@pytest.mark.parametrize("size, grid", [((8, 8, 4), 2), ((8, 12, 4), 4)])
def test_cellwise_masked_pool_equals_pooling_the_product(size, grid):
    features, masks = torch.randn(2, 5, *size), torch.rand(2, 3, *size)
    expected = adaptive_pool(features.unsqueeze(1) * masks.unsqueeze(2), [grid] * 3).flatten(3).transpose(2, 3)
    assert torch.allclose(masked_cell_pool(features, masks, grid), expected, atol=1e-6)
