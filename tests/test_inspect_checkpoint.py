"""fomo_inspect_checkpoint: human and --json output, layout detection, task compatibility, errors."""

from __future__ import annotations

import json

import pytest
import torch

from nnunet_ext.errors import EXIT_BAD_INPUT
from nnunet_ext.networks import FomoUNet
from nnunet_ext.pretrained.fomo_layout import architecture_name, decoder_layout_name
from nnunet_ext.pretrained.inspect import EXIT_CHECKPOINT_UNFIT, main
from nnunet_ext.pretrained.testing import make_fomo_checkpoint, make_fomo_state_dict

FILTERS = 4


def _json(capsys, *argv, status: int = 0) -> dict:
    assert main([*map(str, argv), "--json"]) == status
    return json.loads(capsys.readouterr().out)


@pytest.mark.parametrize("layout, tensors", [("unet_b_lw_dec", 66), ("unet_b", 82)])
def test_json_describes_a_fomo_checkpoint(tmp_path, capsys, layout, tensors):
    path = make_fomo_checkpoint(tmp_path / "epoch=12.ckpt", FILTERS, layout, compiled=True)
    info = _json(capsys, path)
    assert info["format"] == "lightning" and info["epoch"] == 12
    assert info["decoder_layout"] == layout and info["starting_filters"] == FILTERS
    assert info["input_channels"] == 1 and info["tensors"] == tensors and info["matches_fomo_layout"]
    assert info["parameters"] == sum(t.numel() for t in make_fomo_state_dict(FILTERS, layout).values())
    assert info["hyper_parameters"]["model_name"] == layout
    assert info["hyper_parameters"]["patch_size"] == [96, 96, 96]
    assert {task: value["can_initialise"] for task, value in info["tasks"].items()} == {"1": True, "2": True,
                                                                                        "3": True}
    assert "stem adapted 1 -> 3 channels" in info["tasks"]["2"]["how"]


def test_human_output(tmp_path, capsys):
    path = make_fomo_checkpoint(tmp_path / "epoch=12.ckpt", FILTERS, "unet_b")
    assert main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "decoder layout unet_b" in out and "starting filters: 4" in out and "exact match" in out
    assert "model_name: unet_b" in out
    assert "Task 1 (classification, 4 channels): yes: encoder (decoder unused): 40/40 tensors" in out
    assert "Task 2 (segmentation, 3 channels): yes: encoder and decoder: 80/80 tensors" in out


def test_architecture_names_of_published_widths():
    assert [architecture_name(f) for f in (32, 64, 4)] == ["unet_b", "unet_xl", "unknown"]
    assert [decoder_layout_name(n) for n in (1, 2, 3)] == ["unet_b_lw_dec", "unet_b", "unknown"]


def test_incomplete_checkpoint_differs_and_segmentation_is_refused(tmp_path, capsys):
    state_dict = make_fomo_state_dict(FILTERS)
    del state_dict["decoder.decoder_conv2.conv1.norm.bias"]
    torch.save(state_dict, tmp_path / "partial.pt")
    info = _json(capsys, tmp_path / "partial.pt", status=EXIT_CHECKPOINT_UNFIT)  # the report, and a failing status
    assert not info["matches_fomo_layout"]
    assert info["layout_differences"] == {"missing": ["decoder.decoder_conv2.conv1.norm.bias"]}
    assert info["tasks"]["2"]["can_initialise"] is False and info["tasks"]["1"]["can_initialise"] is True


def test_other_architecture_is_unknown(tmp_path, capsys):
    torch.save({"conv1.weight": torch.zeros(8, 1, 3, 3)}, tmp_path / "other.pt")
    info = _json(capsys, tmp_path / "other.pt", status=EXIT_CHECKPOINT_UNFIT)
    assert info["architecture"] == "unknown" and info["tasks"] == {} and not info["matches_fomo_layout"]
    assert main([str(tmp_path / "other.pt")]) == EXIT_CHECKPOINT_UNFIT
    captured = capsys.readouterr()
    assert "none (not a FOMO UNet checkpoint)" in captured.out
    assert f"error: {tmp_path / 'other.pt'}: not in the FOMO UNet layout (an unknown architecture)" in captured.err


def test_nonfinite_weights_fail_the_inspection(tmp_path, capsys):
    state_dict = make_fomo_state_dict(FILTERS)
    state_dict["decoder.decoder_conv2.conv1.norm.bias"][0] = float("nan")
    torch.save(state_dict, tmp_path / "nan.pt")
    info = _json(capsys, tmp_path / "nan.pt", status=EXIT_CHECKPOINT_UNFIT)
    assert info["matches_fomo_layout"] and info["nonfinite_tensors"] == ["decoder.decoder_conv2.conv1.norm.bias"]
    assert main([str(tmp_path / "nan.pt")]) == EXIT_CHECKPOINT_UNFIT
    captured = capsys.readouterr()
    assert "finite weights:   NO: 1 tensor(s) hold NaN/Inf" in captured.out
    assert "1 tensor(s) hold NaN/Inf weights" in captured.err


def test_bad_input_exits_with_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "absent.ckpt")])
    assert exit_info.value.code == EXIT_BAD_INPUT
    assert capsys.readouterr().err.strip().endswith("checkpoint not found (or not a file)")


class _RunsCode:
    """Unpickling this calls a function: refused unless the user trusts the file."""

    def __reduce__(self):
        return (print, ("code ran while loading",))


def test_trust_checkpoint_flag(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FOMO_TRUST_CHECKPOINT", raising=False)
    path = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": make_fomo_state_dict(FILTERS), "callbacks": _RunsCode()}, path)
    with pytest.raises(SystemExit):
        main([str(path)])
    assert "--trust-checkpoint" in capsys.readouterr().err
    assert main([str(path), "--trust-checkpoint"]) == 0
    assert "exact match" in capsys.readouterr().out


def test_nnunet_checkpoint_of_our_network(tmp_path, capsys):
    torch.save({"network_weights": FomoUNet(3, 2, FILTERS, decoder_convs=2).state_dict(), "current_epoch": 5},
               tmp_path / "checkpoint_final.pth")
    info = _json(capsys, tmp_path / "checkpoint_final.pth")
    assert info["format"] == "nnunet" and info["decoder_layout"] == "unet_b" and info["input_channels"] == 3
    assert info["matches_fomo_layout"] and info["tensors"] == 82
    assert len(info["keys_without_fomo_counterpart"]) == 6  # deep-supervision heads
    assert info["tasks"]["2"]["can_initialise"]
