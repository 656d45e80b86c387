import pytest
import torch

from helpers import save_as_if_saved_on_gpu, tiny_plans_network
from nnunet_mass.networks.unwrap import unwrap
from nnunet_mass.training.transfer import (TRANSFER_PARTS, IncompatibleWeightsError, load_pretrained_weights,
                                           route_pretrained_weights_loading)


def _checkpoint(network, prefix=""):
    return {"network_weights": {prefix + k: v for k, v in network.state_dict().items()}}


def _same(a, b, skip=".seg_layers."):
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items() if skip not in k)


def test_gpu_checkpoint_loads_on_a_cpu_only_machine(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("the point is a machine without CUDA")
    source, target = tiny_plans_network(), tiny_plans_network(num_classes=5)
    path = tmp_path / "gpu.pth"
    save_as_if_saved_on_gpu(_checkpoint(source), path)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=False)  # what nnU-Net's own loader does
    load_pretrained_weights(target, str(path))
    assert _same(source, target)
    seg_key = next(k for k in target.state_dict() if ".seg_layers." in k)
    assert target.state_dict()[seg_key].shape[0] == 5


def test_wrapper_prefixes_of_ddp_and_compile_are_ignored(tmp_path):
    source, target = tiny_plans_network(), tiny_plans_network()
    torch.save(_checkpoint(source, prefix="module._orig_mod."), tmp_path / "ddp.pth")
    load_pretrained_weights(target, str(tmp_path / "ddp.pth"))
    assert _same(source, target)


def test_mismatch_names_every_layer_and_the_fix(tmp_path):
    torch.save(_checkpoint(tiny_plans_network(features=(4, 8, 32))), tmp_path / "other.pth")
    target = tiny_plans_network()
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(IncompatibleWeightsError) as error:
        load_pretrained_weights(target, str(tmp_path / "other.pth"))
    message = str(error.value)
    assert "encoder.stages.2.0.convs.0.conv.weight: pretrained (32, 8, 3, 3, 3), this network (16, 8, 3, 3, 3)" \
        in message
    assert "nnUNetv2_move_plans_between_datasets" in message
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


def test_missing_file_and_foreign_file_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained_weights(tiny_plans_network(), str(tmp_path / "nope.pth"))
    torch.save({"state_dict": {}}, tmp_path / "foreign.pth")
    with pytest.raises(IncompatibleWeightsError, match="network_weights"):
        load_pretrained_weights(tiny_plans_network(), str(tmp_path / "foreign.pth"))


def test_routing_replaces_the_loader_nnunet_train_calls():
    import nnunetv2.run.run_training as run_training

    original = run_training.load_pretrained_weights
    try:
        route_pretrained_weights_loading(TRANSFER_PARTS["encoder"])
        assert run_training.load_pretrained_weights.func is load_pretrained_weights
        assert run_training.load_pretrained_weights.keywords == {"parts": TRANSFER_PARTS["encoder"]}
    finally:
        run_training.load_pretrained_weights = original


def test_unwrap_strips_compile_wrappers():
    network = tiny_plans_network()
    assert unwrap(torch.compile(network)) is network
    assert unwrap(network) is network


def _unet(conv=torch.nn.Conv3d, decoder_convs=1):
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    norm = torch.nn.InstanceNorm3d if conv is torch.nn.Conv3d else torch.nn.InstanceNorm2d
    return PlainConvUNet(1, 3, [4, 8, 16], conv, 3, [1, 2, 2], 1, 3, decoder_convs, conv_bias=True, norm_op=norm,
                         norm_op_kwargs={"affine": True}, nonlin=torch.nn.LeakyReLU)


def test_encoder_only_transfer_takes_the_encoder_of_a_checkpoint_whose_decoder_differs(tmp_path):
    source, target = _unet(decoder_convs=1), _unet(decoder_convs=2)
    torch.save(_checkpoint(source), tmp_path / "shallower_decoder.pth")
    with pytest.raises(IncompatibleWeightsError, match="decoder.stages.0.convs.1"):
        load_pretrained_weights(target, str(tmp_path / "shallower_decoder.pth"))
    decoder_before = {k: v.clone() for k, v in target.decoder.state_dict().items() if not k.startswith("encoder.")}
    load_pretrained_weights(target, str(tmp_path / "shallower_decoder.pth"), parts=TRANSFER_PARTS["encoder"])
    assert all(torch.equal(v, source.encoder.state_dict()[k]) for k, v in target.encoder.state_dict().items())
    assert all(torch.equal(v, target.decoder.state_dict()[k]) for k, v in decoder_before.items())


def test_a_2d_checkpoint_into_a_3d_network_is_named_as_such(tmp_path):
    torch.save(_checkpoint(_unet(conv=torch.nn.Conv2d)), tmp_path / "2d.pth")
    with pytest.raises(IncompatibleWeightsError, match="come from a 2D configuration and this network is 3D"):
        load_pretrained_weights(_unet(), str(tmp_path / "2d.pth"))
