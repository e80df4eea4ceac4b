"""``fomo_train_ddp`` under ``torchrun``: two processes on this machine (gloo, CPU) join through torchrun's
``env://`` rendezvous and train one FOMO trainer through nnU-Net's ``run_training``; each rank's GPU would be
``$LOCAL_RANK``, not its global rank; outside torchrun the command refuses to start."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from case_level_datasets import CONFIGURATION, CaseLevelDataset, planned_case_level_dataset
from nnunet_ext.errors import EXIT_BAD_INPUT
from nnunet_ext.trainers import base, launch

CLASSIFICATION_CASES = 10
TRAINER = "FomoClassificationTrainer_debug"
#: Two processes starting torch and nnU-Net on shared CPUs: generous, but no hang may block the suite.
TORCHRUN_TIMEOUT_S = 300


@pytest.fixture
def classification(tmp_path_factory, tmp_path, monkeypatch) -> CaseLevelDataset:
    return planned_case_level_dataset(tmp_path_factory, tmp_path, "classification", CLASSIFICATION_CASES, monkeypatch)


def test_two_torchrun_processes_train_one_model(classification, monkeypatch):
    monkeypatch.setenv("nnUNet_compile", "false")
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "nnunet_ext.trainers.launch", classification.name, CONFIGURATION, "0", "-tr", TRAINER,
         "-device", "cpu"],
        capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-3000:]
    # nnU-Net splits the planned batch of 2 over the two ranks
    assert "worker 0 batch_size 1" in result.stdout and "worker 1 batch_size 1" in result.stdout
    fold = classification.fold_folder(TRAINER)
    checkpoint = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert len(checkpoint["logging"]["val_auroc"]) == 2
    summary = json.loads((fold / "validation" / "summary.json").read_text())
    assert summary["n_cases"] == len(classification.splits[0]["val"])


def test_outside_torchrun_the_command_refuses_to_start(monkeypatch, capsys):
    for name in launch.TORCHRUN_VARS:
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(SystemExit) as refused:
        launch.main(["2", CONFIGURATION, "0"])
    assert refused.value.code == EXIT_BAD_INPUT
    assert "not set: start fomo_train_ddp with torchrun" in capsys.readouterr().err


def test_a_rank_trains_on_the_gpu_of_its_local_rank(monkeypatch):
    monkeypatch.setattr(base, "rank", lambda: 5)  # the second GPU of the second machine of four GPUs each
    monkeypatch.setenv(base.LOCAL_RANK_ENV, "1")
    assert base.ddp_device(torch.device("cuda")) == torch.device("cuda", 1)
    monkeypatch.delenv(base.LOCAL_RANK_ENV)  # nnU-Net's own one-machine launcher sets none
    assert base.ddp_device(torch.device("cuda")) == torch.device("cuda", 5)
    assert base.ddp_device(torch.device("cpu")) == torch.device("cpu")
