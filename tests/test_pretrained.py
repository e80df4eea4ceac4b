"""Pretrained FOMO weights: reading every checkpoint variant, the key table, transfer, refusals, the report."""

from __future__ import annotations

import hashlib
import json
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_ext.errors import FomoInputError
from nnunet_ext.networks import FomoUNet
from nnunet_ext.pretrained import load_fomo_state_dict, sha256_of_file, transfer_fomo_weights
from nnunet_ext.pretrained.key_mapping import build_key_table
from nnunet_ext.pretrained.testing import make_fomo_checkpoint, make_fomo_state_dict

FILTERS = 4  # tiny widths keep the tests fast; the layout is what is under test
PATCH = 32
LAYOUT_CONVS = {"unet_b_lw_dec": 1, "unet_b": 2}
# Tensor counts of the spec (fomo_reference.md section 1): encoder 40, upsamplers 8, decoder 16 per conv, out 2.
SEG_TRANSFERABLE = {"unet_b_lw_dec": 64, "unet_b": 80}
ENCODER_TENSORS = 40


def _input(channels: int = 1) -> torch.Tensor:
    return torch.rand(1, channels, PATCH, PATCH, PATCH, generator=torch.Generator().manual_seed(1))


def _snapshot(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in net.state_dict().items()}


# ---- the spec itself -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout, tensors, parameters", [("unet_b_lw_dec", 66, 20_229_697),
                                                         ("unet_b", 82, 22_581_217)])
def test_test_checkpoints_have_the_real_counts(layout, tensors, parameters):
    state_dict = make_fomo_state_dict(32, layout)
    assert len(state_dict) == tensors
    assert sum(t.numel() for t in state_dict.values()) == parameters
    assert state_dict["encoder.encoder_conv4.conv2.conv.weight"].shape == (512, 512, 3, 3, 3)
    assert state_dict["decoder.upsample1.weight"].shape == (512, 256, 2, 2, 2)
    assert state_dict["decoder.decoder_conv1.conv1.conv.weight"].shape == (256, 512, 3, 3, 3)
    assert state_dict["decoder.out_conv.weight"].shape == (1, 32, 1, 1, 1)


# ---- reading ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("lightning, compiled", [(True, False), (True, True), (False, False), (False, True)])
def test_reads_lightning_and_bare_checkpoints_with_either_prefix(tmp_path, lightning, compiled):
    path = make_fomo_checkpoint(tmp_path / "epoch=12.ckpt", FILTERS, lightning=lightning, compiled=compiled)
    state_dict, metadata = load_fomo_state_dict(path)
    assert state_dict.keys() == make_fomo_state_dict(FILTERS).keys()
    assert all(torch.equal(state_dict[k], v) for k, v in make_fomo_state_dict(FILTERS).items())
    assert metadata["format"] == ("lightning" if lightning else "state_dict")
    if lightning:
        assert metadata["epoch"] == 12
        assert metadata["hyper_parameters"]["model_name"] == "unet_b_lw_dec"


def test_reads_gpu_saved_checkpoint_on_cpu(tmp_path, monkeypatch):
    # There is no GPU here, so we cannot save real CUDA tensors. torch.save records each storage's device as a
    # location tag; a tagger registered first makes every storage claim "cuda:0", which is byte-for-byte what a
    # GPU-saved file records. Loading it as-is then fails as on any CPU-only machine; our loader maps to the CPU.
    monkeypatch.setattr(torch.serialization, "_package_registry", list(torch.serialization._package_registry))
    torch.serialization.register_package(-1, lambda storage: "cuda:0", lambda storage, location: None)
    path = make_fomo_checkpoint(tmp_path / "gpu.ckpt", FILTERS)
    with pytest.raises(RuntimeError, match="CUDA"):
        torch.load(path, weights_only=True)
    state_dict, _ = load_fomo_state_dict(path)
    assert {t.device.type for t in state_dict.values()} == {"cpu"}
    assert torch.equal(state_dict["decoder.out_conv.bias"], make_fomo_state_dict(FILTERS)["decoder.out_conv.bias"])


def _nnunet_checkpoint(path, network: FomoUNet) -> None:
    """What nnU-Net's save_checkpoint writes, with the numpy scalars its logging holds."""
    torch.save({"network_weights": network.state_dict(), "optimizer_state": {"state": {}, "param_groups": []},
                "grad_scaler_state": None, "logging": {"mean_fg_dice": [np.float64(0.5)], "epoch_end_timestamps": []},
                "_best_ema": np.float64(0.5), "current_epoch": 3,
                "init_args": {"plans": {}, "configuration": "3d_fullres", "fold": 0, "device": torch.device("cpu")},
                "trainer_name": "nnUNetTrainer", "inference_allowed_mirroring_axes": (0, 1, 2)}, path)


def test_nnunet_checkpoint_reads_and_transfers(tmp_path):
    trained = FomoUNet(3, 2, FILTERS, decoder_convs=2, deep_supervision=True)
    _nnunet_checkpoint(tmp_path / "checkpoint_final.pth", trained)
    state_dict, metadata = load_fomo_state_dict(tmp_path / "checkpoint_final.pth")
    assert metadata == {"format": "nnunet", "hyper_parameters": {}, "epoch": 3}
    fresh = FomoUNet(3, 2, FILTERS, decoder_convs=2)
    report = transfer_fomo_weights(fresh, state_dict)
    assert report.complete and report.transferred == report.transferable == SEG_TRANSFERABLE["unet_b"]
    assert report.counts()["unused"] == 6  # the deep-supervision heads have no FOMO counterpart
    trained_params = dict(trained.named_parameters())
    for name, param in fresh.named_parameters():
        if name.startswith("encoder.") or ".stages." in name or ".transpconvs." in name:
            assert torch.equal(param, trained_params[name]), name


# ---- transfer --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layout, lightning, compiled", [("unet_b_lw_dec", True, False), ("unet_b", True, True),
                                                         ("unet_b_lw_dec", False, True), ("unet_b", False, False)])
def test_segmentation_transfer_is_bit_exact(tmp_path, layout, lightning, compiled):
    path = make_fomo_checkpoint(tmp_path / "c.ckpt", FILTERS, layout, lightning=lightning, compiled=compiled)
    net = FomoUNet(1, 2, FILTERS, decoder_convs=LAYOUT_CONVS[layout])
    state_dict, _ = load_fomo_state_dict(path)
    report = transfer_fomo_weights(net, state_dict, checkpoint=path)
    expected = make_fomo_state_dict(FILTERS, layout)
    params = dict(net.named_parameters())
    for fomo_key, our_name in build_key_table(5, LAYOUT_CONVS[layout], with_decoder=True).items():
        assert torch.equal(params[our_name], expected[fomo_key]), fomo_key
    # A few placements spelled out by hand, so a systematically wrong table cannot pass on its own.
    assert torch.equal(net.encoder.stages[2][1].convs[1].norm.bias, expected["encoder.encoder_conv2.conv2.norm.bias"])
    assert torch.equal(net.decoder.transpconvs[3].weight, expected["decoder.upsample4.weight"])
    assert torch.equal(net.decoder.stages[0].convs[-1].conv.weight,
                       expected[f"decoder.decoder_conv1.conv{LAYOUT_CONVS[layout]}.conv.weight"])
    counts = report.counts()
    assert counts["loaded"] == report.transferable == SEG_TRANSFERABLE[layout]
    assert counts["missing"] == counts["shape-mismatch"] == counts["unexpected"] == counts["unused"] == 0
    assert report.keys_with("reinitialised")[:2] == ["decoder.out_conv.weight", "decoder.out_conv.bias"]
    assert report.sha256 == sha256_of_file(path)


def _reference_block(x, sd, block, n_convs):
    """FOMO's conv block from the spec: (Conv3d k3 p1 -> InstanceNorm3d affine -> LeakyReLU 0.01) x n_convs."""
    for k in range(1, n_convs + 1):
        layer = f"{block}.conv{k}"
        x = F.conv3d(x, sd[f"{layer}.conv.weight"], sd[f"{layer}.conv.bias"], padding=1)
        x = F.instance_norm(x, weight=sd[f"{layer}.norm.weight"], bias=sd[f"{layer}.norm.bias"], eps=1e-5)
        x = F.leaky_relu(x, 0.01)
    return x


def _reference_encoder(x, sd):
    skips = [_reference_block(x, sd, "encoder.in_conv", 2)]
    for level in range(1, 5):
        skips.append(_reference_block(F.max_pool3d(skips[-1], 2), sd, f"encoder.encoder_conv{level}", 2))
    return skips


def _reference_unet(x, sd, decoder_convs):
    skips = _reference_encoder(x, sd)
    x = skips[-1]
    for i in range(1, 5):
        x = F.conv_transpose3d(x, sd[f"decoder.upsample{i}.weight"], sd[f"decoder.upsample{i}.bias"], stride=2)
        x = _reference_block(torch.cat([x, skips[4 - i]], dim=1), sd, f"decoder.decoder_conv{i}", decoder_convs)
    return F.conv3d(x, sd["decoder.out_conv.weight"], sd["decoder.out_conv.bias"])


@pytest.mark.parametrize("layout", ["unet_b_lw_dec", "unet_b"])
def test_forward_matches_reference_fomo_unet(layout):
    weights = make_fomo_state_dict(FILTERS, layout, seed=3)
    net = FomoUNet(1, 1, FILTERS, decoder_convs=LAYOUT_CONVS[layout]).eval()
    transfer_fomo_weights(net, weights)
    # The output conv is re-initialised by design: the reference uses the network's own output conv.
    out_conv = net.decoder.seg_layers[-1]
    reference_weights = {**weights, "decoder.out_conv.weight": out_conv.weight, "decoder.out_conv.bias": out_conv.bias}
    with torch.no_grad():
        torch.testing.assert_close(net(_input()), _reference_unet(_input(), reference_weights, LAYOUT_CONVS[layout]),
                                   rtol=0, atol=1e-5)


def test_classification_forward_matches_reference_encoder_and_pooling():
    weights = make_fomo_state_dict(FILTERS, "unet_b", seed=4)
    net = FomoUNet(1, 2, FILTERS, task_type="classification").eval()
    report = transfer_fomo_weights(net, weights)
    assert report.counts()["loaded"] == ENCODER_TENSORS
    assert report.counts()["unused"] == len(weights) - ENCODER_TENSORS  # the whole decoder, out_conv included
    with torch.no_grad():
        pooled = _reference_encoder(_input(), weights)[-1].mean(dim=(2, 3, 4))
        torch.testing.assert_close(net(_input()), F.linear(pooled, net.head.linear.weight, net.head.linear.bias),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("channels", [2, 4])
def test_average_adaptation_reproduces_pretrained_stem_on_identical_channels(channels):
    weights = make_fomo_state_dict(FILTERS)
    net = FomoUNet(channels, 2, FILTERS, task_type="classification")
    report = transfer_fomo_weights(net, weights, channel_adaptation="average")
    assert report.keys_with("adapted") == ["encoder.in_conv.conv1.conv.weight"]
    x = _input()
    stem = net.encoder.stages[0][0].convs[0].conv
    with torch.no_grad():
        torch.testing.assert_close(stem(x.repeat(1, channels, 1, 1, 1)),
                                   F.conv3d(x, weights["encoder.in_conv.conv1.conv.weight"],
                                            weights["encoder.in_conv.conv1.conv.bias"], padding=1),
                                   rtol=0, atol=1e-5)


@pytest.mark.parametrize("strategy, expected", [("copy", lambda w, c: [w] * c),
                                                ("first", lambda w, c: [w] + [torch.zeros_like(w)] * (c - 1))])
def test_copy_and_first_adaptations(strategy, expected):
    weights = make_fomo_state_dict(FILTERS)
    net = FomoUNet(3, 2, FILTERS)
    transfer_fomo_weights(net, weights, channel_adaptation=strategy)
    stem = net.encoder.stages[0][0].convs[0].conv.weight
    pretrained = weights["encoder.in_conv.conv1.conv.weight"]
    for channel, kernel in enumerate(expected(pretrained, 3)):
        assert torch.equal(stem[:, channel:channel + 1], kernel)


def test_output_conv_is_reinitialised_not_left_stale():
    net = FomoUNet(1, 1, FILTERS)
    out_conv = net.decoder.seg_layers[-1]
    with torch.no_grad():
        out_conv.bias.fill_(7.0)
    transfer_fomo_weights(net, make_fomo_state_dict(FILTERS))
    assert torch.count_nonzero(out_conv.bias) == 0  # He init zeroes biases
    assert not torch.equal(out_conv.weight, make_fomo_state_dict(FILTERS)["decoder.out_conv.weight"])


# ---- refusals ----------------------------------------------------------------------------------------------------

def test_refuses_wider_checkpoint_like_unet_xl_into_unet_b():
    net = FomoUNet(1, 2, FILTERS)
    before = _snapshot(net)
    with pytest.raises(FomoInputError, match=r"starting filters 8 .* has 4"):
        transfer_fomo_weights(net, make_fomo_state_dict(2 * FILTERS))
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())


@pytest.mark.parametrize("checkpoint_layout, network_convs, status",
                         [("unet_b_lw_dec", 2, "missing"), ("unet_b", 1, "unexpected")])
def test_decoder_layout_mismatch_refused_for_segmentation_unless_partial(checkpoint_layout, network_convs, status):
    weights = make_fomo_state_dict(FILTERS, checkpoint_layout)
    net = FomoUNet(1, 2, FILTERS, decoder_convs=network_convs)
    before = _snapshot(net)
    with pytest.raises(FomoInputError, match="decoder layout"):
        transfer_fomo_weights(net, weights)
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())  # nothing copied
    report = transfer_fomo_weights(net, weights, allow_partial=True)
    assert report.counts()[status] == 16 and not report.complete
    assert report.transferred == SEG_TRANSFERABLE["unet_b_lw_dec"]


def test_decoder_layout_does_not_matter_for_classification():
    report = transfer_fomo_weights(FomoUNet(1, 2, FILTERS, decoder_convs=1, task_type="classification"),
                                   make_fomo_state_dict(FILTERS, "unet_b"))
    assert report.complete and report.transferred == ENCODER_TENSORS


def test_refuses_another_architecture_even_with_allow_partial():
    resnet_like = {"conv1.weight": torch.zeros(64, 1, 7, 7, 7), "fc.weight": torch.zeros(2, 64)}
    for allow_partial in (False, True):
        with pytest.raises(FomoInputError, match="not a FOMO UNet checkpoint"):
            transfer_fomo_weights(FomoUNet(1, 2, FILTERS), resnet_like, allow_partial=allow_partial)


def test_refuses_unknown_channel_adaptation():
    with pytest.raises(FomoInputError, match="channel adaptation"):
        transfer_fomo_weights(FomoUNet(2, 2, FILTERS), make_fomo_state_dict(FILTERS), channel_adaptation="mean")


def test_refuses_missing_path_and_folder(tmp_path):
    for path in (tmp_path / "absent.ckpt", tmp_path):
        with pytest.raises(FomoInputError, match="not found"):
            load_fomo_state_dict(path)


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all" * 10, b"PK\x03\x04 broken zip"])
def test_refuses_corrupt_files(tmp_path, content):
    path = tmp_path / "corrupt.ckpt"
    path.write_bytes(content)
    with pytest.raises(FomoInputError, match="not a readable PyTorch checkpoint"):
        load_fomo_state_dict(path)


def test_refuses_truncated_checkpoint(tmp_path):
    path = make_fomo_checkpoint(tmp_path / "full.ckpt", FILTERS)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(FomoInputError, match="not a readable PyTorch checkpoint"):
        load_fomo_state_dict(truncated)


@pytest.mark.parametrize("content, message", [([torch.zeros(1)], "holds a list"),
                                              ({"epoch": 3, "note": "hi"}, "not tensors"),
                                              ({"state_dict": {}}, "no state dict")])
def test_refuses_files_that_are_not_checkpoints(tmp_path, content, message):
    torch.save(content, tmp_path / "x.pt")
    with pytest.raises(FomoInputError, match=message):
        load_fomo_state_dict(tmp_path / "x.pt")


class _RunsCode:
    """Unpickling this calls a function: exactly what the safe loader must refuse."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_refuses_unsafe_globals_and_names_them(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("FOMO_TRUST_CHECKPOINT", raising=False)
    path = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": make_fomo_state_dict(FILTERS), "callbacks": _RunsCode()}, path)
    with pytest.raises(FomoInputError, match=r"builtins\.print.*--trust-checkpoint.*FOMO_TRUST_CHECKPOINT=1"):
        load_fomo_state_dict(path)
    assert "code ran" not in capsys.readouterr().out


@pytest.mark.parametrize("by_flag", [True, False])
def test_trusted_checkpoint_opt_in(tmp_path, monkeypatch, capsys, by_flag):
    path = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": make_fomo_state_dict(FILTERS), "callbacks": _RunsCode()}, path)
    if by_flag:
        monkeypatch.delenv("FOMO_TRUST_CHECKPOINT", raising=False)
    else:
        monkeypatch.setenv("FOMO_TRUST_CHECKPOINT", "1")
    state_dict, metadata = load_fomo_state_dict(path, trust_checkpoint=by_flag)
    assert len(state_dict) == 66 and metadata["format"] == "lightning"
    assert "code ran" in capsys.readouterr().out  # the opt-in really unpickles everything


def test_lightning_attribute_dict_loads_without_lightning(tmp_path, monkeypatch):
    # Lightning is not installed. A stand-in registered under Lightning's module name makes pickle write the
    # same global a Lightning checkpoint with AttributeDict hyper-parameters holds; it is removed before loading.
    module_names = ["lightning", "lightning.fabric", "lightning.fabric.utilities", "lightning.fabric.utilities.data"]
    for name in module_names:
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    attribute_dict = type("AttributeDict", (dict,), {"__module__": module_names[-1]})
    sys.modules[module_names[-1]].AttributeDict = attribute_dict
    content = torch.load(make_fomo_checkpoint(tmp_path / "a.ckpt", FILTERS), weights_only=True)
    content["hyper_parameters"] = attribute_dict(content["hyper_parameters"])
    torch.save(content, tmp_path / "attrdict.ckpt")
    for name in module_names:
        monkeypatch.delitem(sys.modules, name)
    assert "lightning.fabric.utilities.data.AttributeDict" in torch.serialization.get_unsafe_globals_in_checkpoint(
        tmp_path / "attrdict.ckpt")
    _, metadata = load_fomo_state_dict(tmp_path / "attrdict.ckpt")
    assert metadata["hyper_parameters"]["patch_size"] == [96, 96, 96]


# ---- report ------------------------------------------------------------------------------------------------------

def test_report_json_summary_and_sha256(tmp_path):
    path = make_fomo_checkpoint(tmp_path / "epoch=12.ckpt", FILTERS)
    state_dict, _ = load_fomo_state_dict(path)
    report = transfer_fomo_weights(FomoUNet(3, 2, FILTERS, deep_supervision=True), state_dict, checkpoint=path)
    saved = json.loads(report.save(tmp_path / "out" / "transfer_report.json").read_text())
    assert saved["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert saved["complete"] and saved["transferred"] == saved["transferable"] == 64
    assert saved["counts"] == {"loaded": 63, "adapted": 1, "shape-mismatch": 0, "missing": 0, "unexpected": 0,
                               "unused": 0, "reinitialised": 8}  # output conv 2 + deep-supervision heads 6
    assert len(saved["entries"]) == sum(saved["counts"].values())
    stem = next(e for e in saved["entries"] if e["source"] == "encoder.in_conv.conv1.conv.weight")
    assert stem["source_shape"] == [FILTERS, 1, 3, 3, 3] and stem["target_shape"] == [FILTERS, 3, 3, 3, 3]
    summary = report.summary()
    assert "transferred 64/64" in summary and "adapted 1" in summary and str(path) in summary


def test_refuses_state_dict_with_both_plain_and_compiled_prefix(tmp_path):
    weights = make_fomo_state_dict(FILTERS)
    stem = "encoder.in_conv.conv1.conv.bias"
    torch.save({"model." + stem: weights[stem], "model._orig_mod." + stem: weights[stem]}, tmp_path / "both.ckpt")
    with pytest.raises(FomoInputError, match="twice"):
        load_fomo_state_dict(tmp_path / "both.ckpt")
