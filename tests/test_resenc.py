"""FOMO26's ResEnc-B: the checkpoint spec against gardening-tools (FOMO26's own network library), the forward pass
of FomoResEncUNet against gardening-tools' network on the same weights, the transfer report, refusals, inspection and
planning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

# FOMO26's own network (setup.cfg's test extra; gardening-tools needs Python >= 3.11)
GardeningResEncUNet = pytest.importorskip("gardening_tools.modules.networks.resunet").ResidualEncoderUNet

from nnunet_ext.errors import FomoInputError
from nnunet_ext.networks import FomoResEncUNet, FomoUNet
from nnunet_ext.networks.resenc import RESENC_PRESETS
from nnunet_ext.preprocessing.planner import FomoPlanSettings
from nnunet_ext.pretrained import load_fomo_state_dict, transfer_fomo_weights
from nnunet_ext.pretrained.inspect import inspect_checkpoint, main as inspect_main
from nnunet_ext.pretrained.resenc_layout import FOMO26, ResEncLayout, describe
from nnunet_ext.pretrained.testing import (
    make_fomo_checkpoint,
    make_resenc_checkpoint,
    make_resenc_state_dict,
    resenc_layout_for,
)

MODEL = "resenc_unet_b"
#: resenc_unet_b at 1/8 width: features 4, 8, 16, 32, 40, 40 with FOMO26's 1, 3, 4, 6, 6, 6 residual blocks.
FILTERS = 4
#: The smallest input of a 6-stage network with instance norm: 5 downsamplings leave 2^3 bottleneck voxels.
EDGE = 64
#: FOMO26's settings of resenc_unet_b (asparagus' resenc_unet.py), for gardening-tools' class.
GARDENING_SETTINGS = {"dimensions": "3D", "kernel_size": 3, "stride": 2}


def _gardening(layout: ResEncLayout, input_channels: int = 1, output_channels: int = 1) -> GardeningResEncUNet:
    return GardeningResEncUNet(input_channels=input_channels, output_channels=output_channels,
                               features_per_stage=layout.features, n_blocks_per_stage=layout.blocks,
                               n_conv_per_stage_decoder=(layout.decoder_convs,) * (layout.n_stages - 1),
                               **GARDENING_SETTINGS).eval()


@pytest.fixture(scope="module")
def layout() -> ResEncLayout:
    return resenc_layout_for(MODEL, FILTERS)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, layout) -> Path:
    return make_resenc_checkpoint(tmp_path_factory.mktemp("resenc") / "resenc_unet_b.ckpt", layout)


@pytest.mark.parametrize("decoder_convs", [1, 2])
def test_spec_is_gardening_tools_state_dict(decoder_convs: int):
    """Every key (second names included) and shape of gardening-tools' network, whatever the channels."""
    layout = ResEncLayout(resenc_layout_for(MODEL, FILTERS).features, RESENC_PRESETS[MODEL][1], decoder_convs, 3, 2)
    theirs = _gardening(layout, 3, 2).state_dict()
    ours = make_resenc_state_dict(layout, FOMO26)
    assert list(theirs) == [key for key in theirs if key in ours] and set(theirs) == set(ours)
    assert all(theirs[key].shape == ours[key].shape for key in theirs)


def test_published_resenc_unet_b_is_the_90m_encoder():
    features, blocks = RESENC_PRESETS[MODEL]
    assert features == (32, 64, 128, 256, 320, 320) and blocks == (1, 3, 4, 6, 6, 6)
    network = FomoResEncUNet(1, 1, features, blocks, task_type="pretraining")
    encoder = sum(p.numel() for p in network.encoder.parameters())
    assert round(encoder / 1e6) == 90 and round(sum(p.numel() for p in network.parameters()) / 1e6) == 102
    assert describe(ResEncLayout(features, blocks), FOMO26)["nnssl_name"] == "ResEncL"


def test_forward_pass_equals_gardening_tools_on_the_same_weights(checkpoint: Path, layout):
    ours = FomoResEncUNet(1, 1, layout.features, layout.blocks, task_type="pretraining")
    report = transfer_fomo_weights(ours, load_fomo_state_dict(checkpoint)[0])
    assert report.complete and report.counts()["loaded"] == len(layout.expected_shapes(FOMO26))
    weights = {key[len("model."):]: tensor for key, tensor in torch.load(checkpoint)["state_dict"].items()}
    theirs = _gardening(layout)
    theirs.load_state_dict(weights)  # gardening-tools' loader drops what does not match: check it took everything
    assert all(torch.equal(tensor, weights[key]) for key, tensor in theirs.state_dict().items())
    x = torch.randn(1, 1, EDGE, EDGE, EDGE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(ours.eval()(x), theirs(x))
        # the encoder of an image-level network is the same encoder: every stage's output equals
        for our_stage, their_stage in zip(ours.encoder(x), theirs.encoder(x), strict=True):
            assert torch.equal(our_stage, their_stage)


def test_compiled_lightning_file_loads_the_same_weights(tmp_path: Path, checkpoint: Path, layout):
    """``model._orig_mod.`` keys (a compiled run) give exactly the tensors of the plain file."""
    compiled = make_resenc_checkpoint(tmp_path / "compiled.ckpt", layout, compiled=True)
    assert next(iter(torch.load(compiled)["state_dict"])).startswith("model._orig_mod.encoder.")
    plain, other = load_fomo_state_dict(checkpoint)[0], load_fomo_state_dict(compiled)[0]
    assert plain.keys() == other.keys() and all(torch.equal(plain[key], other[key]) for key in plain)


def test_stem_adaptation_keeps_the_pretrained_response_on_channel_0(checkpoint: Path, layout):
    """'first': the 3-channel encoder on [x, a, b] computes what the 1-channel pretrained encoder computes on x."""
    ours = FomoResEncUNet(3, 2, layout.features, layout.blocks, task_type="classification")
    report = transfer_fomo_weights(ours, load_fomo_state_dict(checkpoint)[0], channel_adaptation="first")
    assert report.keys_with("adapted") == ["encoder.stem.conv1.conv.weight"]
    theirs = _gardening(layout)
    theirs.load_state_dict({k[len("model."):]: v for k, v in torch.load(checkpoint)["state_dict"].items()})
    x = torch.randn(1, 3, EDGE, EDGE, EDGE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(ours.eval().encoder(x)[-1], theirs.encoder(x[:, :1])[-1], atol=1e-5)


@pytest.mark.parametrize("task_type, num_classes", [("segmentation", 2), ("classification", 2), ("regression", 1)])
def test_report_accounts_for_every_checkpoint_tensor(checkpoint: Path, layout, task_type: str, num_classes: int):
    state_dict = load_fomo_state_dict(checkpoint)[0]
    network = FomoResEncUNet(2, num_classes, layout.features, layout.blocks, task_type=task_type)
    report = transfer_fomo_weights(network, state_dict, checkpoint=checkpoint)
    assert report.complete and report.sha256 and report.layout["architecture"] == "resenc (unpublished size)"
    sources = [entry.source for entry in report.entries if entry.source is not None]
    assert sorted(sources) == sorted(state_dict)  # each checkpoint key exactly once
    encoder = [key for key in layout.expected_shapes(FOMO26) if key.startswith("encoder.")]
    decoder = [key for key in layout.expected_shapes(FOMO26)
               if key.startswith("decoder.") and not key.startswith("decoder.out_conv")]
    taken = set(report.keys_with("loaded", "adapted"))
    assert taken == set(encoder) | (set(decoder) if task_type == "segmentation" else set())
    assert all(entry.note.startswith("second name of ") for entry in report.entries
               if entry.status == "unused" and entry.source in set(state_dict) - set(layout.expected_shapes(FOMO26)))
    # every network parameter was either taken from the checkpoint or is new on purpose (output conv, head)
    targets = {entry.target for entry in report.entries if entry.target is not None}
    assert targets == {name for name, _ in network.named_parameters()}
    loaded = {entry.target: entry.source for entry in report.entries if entry.status == "loaded"}
    params = dict(network.named_parameters())
    assert all(torch.equal(params[target], state_dict[source]) for target, source in loaded.items())


def test_refusals(tmp_path: Path, checkpoint: Path, layout):
    state_dict = load_fomo_state_dict(checkpoint)[0]
    other_size = resenc_layout_for("resenc_unet_s", FILTERS)
    with pytest.raises(FomoInputError, match=r"the checkpoint is .*blocks \[1, 3, 4, 6, 6, 6\].* network has"):
        transfer_fomo_weights(FomoResEncUNet(1, 2, other_size.features, other_size.blocks), state_dict)
    gone = ("encoder.stages.3.blocks.2.conv2.norm_op.bias", "encoder.stages.3.blocks.2.conv2.all_modules.1.bias")
    with pytest.raises(FomoInputError, match=f"missing: {gone[0]}"):
        transfer_fomo_weights(FomoResEncUNet(1, 2, layout.features, layout.blocks),
                              {key: value for key, value in state_dict.items() if key not in gone})
    # only the second name left: it takes the canonical key's place
    report = transfer_fomo_weights(FomoResEncUNet(1, 2, layout.features, layout.blocks),
                                   {key: value for key, value in state_dict.items() if key != gone[0]})
    assert report.complete and gone[0] in report.keys_with("loaded")
    differing = {**state_dict, "encoder.stages.0.blocks.0.conv1.all_modules.0.weight":
                 state_dict["encoder.stages.0.blocks.0.conv1.conv.weight"] + 1}
    with pytest.raises(FomoInputError, match="unexpected: encoder.stages.0.blocks.0.conv1.all_modules.0.weight"):
        transfer_fomo_weights(FomoResEncUNet(1, 2, layout.features, layout.blocks), differing)
    unet = load_fomo_state_dict(make_fomo_checkpoint(tmp_path / "epoch=12.ckpt", starting_filters=FILTERS))[0]
    with pytest.raises(FomoInputError, match="not a residual-encoder U-Net checkpoint"):
        transfer_fomo_weights(FomoResEncUNet(1, 2, layout.features, layout.blocks), unet)
    with pytest.raises(FomoInputError, match="not a FOMO UNet checkpoint"):
        transfer_fomo_weights(FomoUNet(1, 2, FILTERS), state_dict)
    unchanged = FomoResEncUNet(1, 2, other_size.features, other_size.blocks)
    before = {k: v.clone() for k, v in unchanged.state_dict().items()}
    with pytest.raises(FomoInputError):
        transfer_fomo_weights(unchanged, state_dict)
    assert all(torch.equal(before[k], v) for k, v in unchanged.state_dict().items())  # nothing copied


def test_bare_compiled_state_dict_loads_like_the_lightning_file(tmp_path: Path, checkpoint: Path, layout):
    bare = tmp_path / "bare.pt"
    torch.save({f"_orig_mod.{key}": value for key, value in make_resenc_state_dict(layout).items()}, bare)
    report = transfer_fomo_weights(FomoResEncUNet(2, 2, layout.features, layout.blocks), load_fomo_state_dict(bare)[0])
    assert report.complete and report.transferred == 254


def test_inspect_names_family_size_and_tasks(checkpoint: Path, capsys):
    info = inspect_checkpoint(checkpoint)
    assert info["family"] == "resenc" and info["naming"] == FOMO26 and info["matches_fomo_layout"]
    assert info["blocks_per_stage"] == [1, 3, 4, 6, 6, 6] and info["features_per_stage"] == [4, 8, 16, 32, 40, 40]
    assert info["tensors"] == 256 and {t["can_initialise"] for t in info["tasks"].values()} == {True}
    assert "stem adapted 1 -> 3 channels, output conv re-initialised" in info["tasks"][2]["how"]
    assert inspect_main([str(checkpoint)]) == 0
    out = capsys.readouterr().out
    assert "family:           FOMO26 residual-encoder U-Net (gardening-tools names)" in out
    assert "stages:           features [4, 8, 16, 32, 40, 40], residual blocks [1, 3, 4, 6, 6, 6]" in out


def test_planning_settings_build_the_resenc_network(checkpoint: Path, layout):
    settings = FomoPlanSettings(model=MODEL, starting_filters=FILTERS, pretrained=checkpoint)
    assert settings.features == layout.features and settings.n_stages == 6 and settings.pool_levels == (5,)
    kwargs = settings.arch_kwargs("regression")
    assert kwargs["blocks_per_stage"] == [1, 3, 4, 6, 6, 6] and kwargs["head_pool_levels"] == [5]
    assert json.loads(json.dumps(kwargs)) == kwargs
    network = settings.build_network(2, 1, "regression")
    assert isinstance(network, FomoResEncUNet) and network.head.pool_levels == (5,)
    with pytest.raises(FomoInputError, match="patch size"):
        FomoPlanSettings(model=MODEL, patch_size=(32, 32, 32))  # 6 stages need multiples of 32, at least 64
    with pytest.raises(FomoInputError, match="levels 0..5"):
        FomoPlanSettings(model=MODEL, head_pool_levels=(6,))
