"""FomoUNet: shapes, deep supervision, heads, argument checks and construction through nnU-Net's plans path."""

from __future__ import annotations

import json

import pytest
import torch
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_ext.errors import FomoInputError
from nnunet_ext.networks import MODEL_PRESETS, FomoUNet
from nnunet_ext.networks.unet import (
    conv_layer_path,
    decoder_block_path,
    encoder_block_path,
    output_conv_path,
    upsample_path,
)

FILTERS = 4  # tiny network: the architecture, not the width, is under test
PATCH = 32  # smallest size whose 1/16 bottleneck (2 voxels) still allows instance norm


def _input(channels: int = 1, batch: int = 1) -> torch.Tensor:
    return torch.randn(batch, channels, PATCH, PATCH, PATCH, generator=torch.Generator().manual_seed(0))


def test_segmentation_returns_full_resolution_logits():
    net = FomoUNet(3, 2, FILTERS)
    assert net(_input(3)).shape == (1, 2, PATCH, PATCH, PATCH)


def test_deep_supervision_returns_four_scales_and_is_switchable_at_runtime():
    net = FomoUNet(1, 2, FILTERS, deep_supervision=True)
    outputs = net(_input())
    assert [o.shape[-1] for o in outputs] == [PATCH, PATCH // 2, PATCH // 4, PATCH // 8]
    net.decoder.deep_supervision = False  # what nnU-Net's set_deep_supervision_enabled does
    assert net(_input()).shape == (1, 2, PATCH, PATCH, PATCH)


@pytest.mark.parametrize("task_type, outputs", [("classification", 2), ("regression", 1)])
def test_image_level_tasks_build_no_decoder(task_type, outputs):
    net = FomoUNet(4, outputs, FILTERS, task_type=task_type)
    assert not hasattr(net, "decoder")
    assert net(_input(4, batch=2)).shape == (2, outputs)
    assert net.head.linear.in_features == 16 * FILTERS  # the bottleneck's channels


def test_head_pools_several_levels():
    net = FomoUNet(2, 1, FILTERS, task_type="regression", head_pool_levels=[3, 4], head_dropout=0.2)
    assert net.head.linear.in_features == 8 * FILTERS + 16 * FILTERS
    assert net.head.dropout.p == 0.2
    assert net(_input(2)).shape == (1, 1)


@pytest.mark.parametrize("decoder_convs", [1, 2])
def test_layer_types_follow_fomo(decoder_convs):
    net = FomoUNet(1, 2, FILTERS, decoder_convs=decoder_convs)
    layer = net.get_submodule(conv_layer_path(encoder_block_path(0), 0))
    assert isinstance(layer.conv, torch.nn.Conv3d) and layer.conv.kernel_size == (3, 3, 3)
    assert layer.conv.padding == (1, 1, 1) and layer.conv.bias is not None
    assert isinstance(layer.norm, torch.nn.InstanceNorm3d)
    assert layer.norm.affine and not layer.norm.track_running_stats and layer.norm.eps == 1e-5
    assert isinstance(layer.nonlin, torch.nn.LeakyReLU) and layer.nonlin.negative_slope == 0.01
    assert isinstance(net.encoder.stages[1][0], torch.nn.MaxPool3d)
    up = net.get_submodule(upsample_path(0))
    assert isinstance(up, torch.nn.ConvTranspose3d) and up.kernel_size == (2, 2, 2) and up.stride == (2, 2, 2)
    assert len(net.get_submodule(decoder_block_path(0)).convs) == decoder_convs
    out = net.get_submodule(output_conv_path(net.n_stages))
    assert out.kernel_size == (1, 1, 1) and out.out_channels == 2


def test_presets_give_unet_b_and_unet_xl_widths():
    assert MODEL_PRESETS == {"unet_b": 32, "unet_xl": 64}
    assert FomoUNet(1, 1).encoder.output_channels == [32, 64, 128, 256, 512]


def test_built_by_nnunet_from_plans_json():
    arch_kwargs = json.loads(json.dumps({"starting_filters": FILTERS, "decoder_convs": 2,
                                         "task_type": "segmentation", "n_stages": 5,
                                         "strides": [[1, 1, 1]] + [[2, 2, 2]] * 4}))
    net = get_network_from_plans("nnunet_ext.networks.FomoUNet", arch_kwargs, [], input_channels=3,
                                 output_channels=2, deep_supervision=True)
    assert isinstance(net, FomoUNet) and net.decoder.deep_supervision
    assert len(net(_input(3))) == 4
    # nnU-Net applied ``initialize`` (He init): conv biases are zero, unlike PyTorch's default init.
    assert torch.count_nonzero(net.get_submodule(conv_layer_path(encoder_block_path(1), 0)).conv.bias) == 0


def test_head_levels_from_plans_json_lists():
    net = get_network_from_plans("nnunet_ext.networks.FomoUNet",
                                 {"starting_filters": FILTERS, "task_type": "classification",
                                  "head_pool_levels": [2, 4]}, [], 4, 2, deep_supervision=False)
    assert net.head.pool_levels == (2, 4)


@pytest.mark.parametrize("kwargs, message", [
    ({"task_type": "detection"}, "task_type"),
    ({"task_type": "classification", "deep_supervision": True}, "deep supervision"),
    ({"head_dropout": 0.5}, "classification and regression only"),
    ({"head_pool_levels": (3,)}, "classification and regression only"),
    ({"task_type": "regression", "head_pool_levels": (5,)}, "head_pool_levels"),
    ({"task_type": "regression", "head_pool_levels": (4, 4)}, "head_pool_levels"),
    ({"task_type": "regression", "head_dropout": 1.0}, "head_dropout"),
    ({"starting_filters": 0}, "starting_filters"),
    ({"decoder_convs": 0}, "decoder_convs"),
    ({"n_stages": 1}, "n_stages"),
    ({"strides": [[1, 1, 1]] + [[2, 2, 1]] * 4}, "strides"),
])
def test_invalid_arguments_are_refused(kwargs, message):
    with pytest.raises(FomoInputError, match=message):
        FomoUNet(1, 2, **kwargs)


def test_unknown_plans_argument_is_not_ignored():
    with pytest.raises(TypeError):
        FomoUNet(1, 2, FILTERS, conv_op="torch.nn.Conv3d")


def test_feature_map_size_for_nnunet_planners():
    seg = FomoUNet(1, 2, FILTERS)
    cls = FomoUNet(1, 2, FILTERS, task_type="classification")
    encoder_only = cls.compute_conv_feature_map_size((PATCH, PATCH, PATCH))
    assert encoder_only > 2 * FILTERS * PATCH ** 3  # at least the two full-resolution stem layers
    assert seg.compute_conv_feature_map_size((PATCH, PATCH, PATCH)) > encoder_only



@pytest.mark.parametrize("pooling", ["avg", "max", "avgmax"])
def test_head_pools_each_level_as_asked(pooling: str):
    torch.manual_seed(0)
    net = FomoUNet(2, 1, FILTERS, task_type="regression", head_pool_levels=[3, 4], head_pooling=pooling).eval()
    x = torch.randn(2, 2, 32, 32, 32)
    skips = net.encoder(x)
    by_hand = []
    for level in (3, 4):
        flat = skips[level].flatten(2)
        by_hand += {"avg": [flat.mean(-1)], "max": [flat.amax(-1)], "avgmax": [flat.mean(-1), flat.amax(-1)]}[pooling]
    expected = net.head.linear(torch.cat(by_hand, dim=1))
    assert net.head.linear.in_features == len(by_hand) // 2 * (8 + 16) * FILTERS
    torch.testing.assert_close(net(x), expected)


def test_unknown_head_pooling_is_refused():
    with pytest.raises(FomoInputError, match="head_pooling"):
        FomoUNet(2, 1, FILTERS, task_type="regression", head_pooling="median")
    with pytest.raises(FomoInputError, match="classification and regression only"):
        FomoUNet(2, 2, FILTERS, head_pooling="max")
