"""nnssl checkpoints (``network_weights`` + ``nnssl_adaptation_plan``) of the ResEnc-L: the forward pass against
dynamic-network-architectures' ResidualEncoderUNet built with nnssl's published ResEnc-L settings (nnssl's
``get_res_enc_l``; nnssl itself is not a dependency), the transfer report, the adaptation plan's refusals,
inspection and planning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from dynamic_network_architectures.architectures.unet import ResidualEncoderUNet
from torch import nn

from nnunet_ext.errors import FomoInputError
from nnunet_ext.networks import FomoResEncUNet
from nnunet_ext.preprocessing.planner import FomoPlanSettings, pretrained_spec
from nnunet_ext.pretrained import load_fomo_state_dict, transfer_fomo_weights
from nnunet_ext.pretrained.inspect import inspect_checkpoint
from nnunet_ext.pretrained.resenc_layout import NNSSL, ResEncLayout
from nnunet_ext.pretrained.testing import make_nnssl_checkpoint, nnssl_adaptation_plan, resenc_layout_for

#: nnssl's ResEnc-L is FOMO26's resenc_unet_b; at 1/8 width here (features 4 ... 40).
MODEL = "resenc_unet_b"
FILTERS = 4
EDGE = 64


def _nnssl_resenc_l(layout: ResEncLayout, input_channels: int = 1, num_classes: int = 1) -> ResidualEncoderUNet:
    """DNA's network with the settings of nnssl's ``get_res_enc_l`` (architecture_registry.py), at ``layout``'s
    width."""
    n_stages = layout.n_stages
    return ResidualEncoderUNet(
        input_channels=input_channels, n_stages=n_stages, features_per_stage=list(layout.features),
        conv_op=nn.Conv3d, kernel_sizes=[[3, 3, 3]] * n_stages,
        strides=[[1, 1, 1]] + [[2, 2, 2]] * (n_stages - 1), n_blocks_per_stage=list(layout.blocks),
        num_classes=num_classes, n_conv_per_stage_decoder=[1] * (n_stages - 1), conv_bias=True,
        norm_op=nn.InstanceNorm3d, norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
        nonlin_kwargs={"inplace": True}, deep_supervision=False).eval()


@pytest.fixture(scope="module")
def layout() -> ResEncLayout:
    return resenc_layout_for(MODEL, FILTERS)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, layout) -> Path:
    return make_nnssl_checkpoint(tmp_path_factory.mktemp("nnssl") / "checkpoint_final.pth", layout)


def test_weights_are_dna_state_dict_and_forward_pass_equals_it(checkpoint: Path, layout):
    content = torch.load(checkpoint)
    theirs = _nnssl_resenc_l(layout)
    theirs.load_state_dict(content["network_weights"], strict=True)  # every key and shape, second names included
    ours = FomoResEncUNet(1, 1, layout.features, layout.blocks, task_type="pretraining").eval()
    state_dict, metadata = load_fomo_state_dict(checkpoint)
    # a width other than the release's is recorded as DNA's dynamic ResidualEncoderUNet
    assert metadata["format"] == "nnssl" and metadata["adaptation_plan"]["architecture_plans"]["arch_class_name"] \
        == "ResidualEncoderUNet"
    assert transfer_fomo_weights(ours, state_dict).complete
    x = torch.randn(1, 1, EDGE, EDGE, EDGE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours(x), theirs(x))


@pytest.mark.parametrize("task_type, num_classes", [("segmentation", 2), ("regression", 1)])
def test_report_accounts_for_every_tensor(checkpoint: Path, layout, task_type: str, num_classes: int):
    state_dict = load_fomo_state_dict(checkpoint)[0]
    network = FomoResEncUNet(3, num_classes, layout.features, layout.blocks, task_type=task_type)
    report = transfer_fomo_weights(network, state_dict, checkpoint=checkpoint)
    assert report.complete and report.layout["naming"] == NNSSL and report.layout["nnssl_name"] is None
    assert sorted(e.source for e in report.entries if e.source is not None) == sorted(state_dict)
    assert report.keys_with("adapted") == ["encoder.stem.convs.0.conv.weight"]
    notes = {e.source: e.note for e in report.entries if e.status == "unused"}
    assert notes["decoder.encoder.stem.convs.0.conv.weight"] == "second name of encoder.stem.convs.0.conv.weight " \
                                                                "(the same tensor)"
    assert notes["decoder.seg_layers.0.weight"].startswith("deep-supervision head")
    taken = report.keys_with("loaded", "adapted")
    assert any(key.startswith("decoder.stages.") for key in taken) == (task_type == "segmentation")
    params = dict(network.named_parameters())
    assert all(torch.equal(params[e.target], state_dict[e.source]) for e in report.entries if e.status == "loaded")


def test_adaptation_plan_refusals(tmp_path: Path, layout):
    primus = nnssl_adaptation_plan(layout)
    primus["architecture_plans"] = {"arch_class_name": "PrimusM", "arch_kwargs": None,
                                    "arch_kwargs_requiring_import": None}
    with pytest.raises(FomoInputError, match="nnssl architecture 'PrimusM' is not a residual-encoder U-Net"):
        load_fomo_state_dict(make_nnssl_checkpoint(tmp_path / "primus.pth", layout, adaptation_plan=primus))
    # a dynamic ResidualEncoderUNet: the plan's settings that the weights do not show are checked
    dynamic = ResEncLayout(layout.features, layout.blocks, decoder_convs=2)
    plan = nnssl_adaptation_plan(dynamic)
    assert plan["architecture_plans"]["arch_class_name"] == "ResidualEncoderUNet"
    state_dict = load_fomo_state_dict(make_nnssl_checkpoint(tmp_path / "dynamic.pth", dynamic))[0]
    network = FomoResEncUNet(1, 2, layout.features, layout.blocks, decoder_convs=2)
    assert transfer_fomo_weights(network, state_dict).complete
    plan["architecture_plans"]["arch_kwargs"]["strides"][1] = [1, 2, 2]
    plan["architecture_plans"]["arch_kwargs"]["nonlin_kwargs"] = {"negative_slope": 0.2}
    with pytest.raises(FomoInputError, match=r"strides .*negative_slope is 0.2"):
        load_fomo_state_dict(make_nnssl_checkpoint(tmp_path / "strided.pth", dynamic, adaptation_plan=plan))
    with pytest.raises(FomoInputError, match="2 conv\\(s\\) per decoder stage but the network has decoder_convs=1"):
        transfer_fomo_weights(FomoResEncUNet(1, 2, layout.features, layout.blocks), state_dict)


def test_inspect_and_planning(checkpoint: Path, layout):
    info = inspect_checkpoint(checkpoint)
    assert info["format"] == "nnssl" and info["family"] == "resenc" and info["naming"] == NNSSL
    assert info["nnssl_architecture"] == "ResidualEncoderUNet" and info["matches_fomo_layout"]
    # the release's size is nnssl's ResEncL preset, whose plan carries no keyword arguments
    release = nnssl_adaptation_plan(resenc_layout_for(MODEL))["architecture_plans"]
    assert release["arch_class_name"] == "ResEncL" and release["arch_kwargs"] is None
    assert all(task["can_initialise"] for task in info["tasks"].values())
    spec = pretrained_spec(FomoPlanSettings(model=MODEL, starting_filters=FILTERS, pretrained=checkpoint))
    assert spec.model == MODEL and spec.starting_filters == FILTERS
    with pytest.raises(FomoInputError, match=r"the checkpoint is .* the plans ask for resenc_unet_s"):
        pretrained_spec(FomoPlanSettings(model="resenc_unet_s", starting_filters=FILTERS, pretrained=checkpoint))
    with pytest.raises(FomoInputError, match="choose --model / --starting-filters"):
        pretrained_spec(FomoPlanSettings(model=MODEL, starting_filters=8, pretrained=checkpoint))
