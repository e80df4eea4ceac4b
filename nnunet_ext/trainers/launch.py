"""``fomo_train_ddp``: one rank of a DDP training started by ``torchrun``, on one machine or several.

nnU-Net's ``nnUNetv2_train -num_gpus N`` spawns N processes on one machine and hands each the GPU of its global
rank. Across machines the launcher is ``torchrun`` (started once per machine, e.g. by ``srun`` in a SLURM job): it
starts one process per GPU and tells each, through its environment, where the rendezvous is (``MASTER_ADDR``,
``MASTER_PORT``), its global ``RANK``, the ``WORLD_SIZE`` and its ``LOCAL_RANK`` on its machine. This command is
that process: it joins the process group (``env://``) and runs nnU-Net's own ``run_training`` in it, which then
trains as one rank; the FOMO trainers take GPU ``$LOCAL_RANK`` (see ``trainers.base``). Its arguments are
``nnUNetv2_train``'s, less ``-num_gpus`` (torchrun's ``--nproc-per-node`` and ``--nnodes`` say it) and
``-pretrained_weights`` (the trainers refuse it).
"""

from __future__ import annotations

import argparse
import os
from typing import Mapping, Optional, Sequence

from nnunet_ext.env import EXT_TRAINER_VAR, ext_trainer_value
from nnunet_ext.errors import FomoInputError, cli_entry

#: What torchrun sets in every process it starts (the ``env://`` rendezvous and the process's place in the job).
TORCHRUN_VARS = ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK")
#: Process-group backend per device type: NCCL between GPUs, gloo between CPU processes (tests, debugging).
BACKENDS = {"cuda": "nccl", "cpu": "gloo"}
DEFAULT_TRAINER = "FomoFinetuneTrainer"
DEFAULT_PLANS = "nnUNetPlans"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fomo_train_ddp",
        description="One rank of a DDP training of a FOMO trainer, started by torchrun on each machine, e.g. "
                    "`torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 "
                    "$(which fomo_train_ddp) 2 3d_fullres 0 -tr FomoFinetuneTrainer`. The arguments are "
                    "nnUNetv2_train's; the planned batch is split over all ranks.")
    parser.add_argument("dataset_name_or_id", help="dataset name or ID, as for nnUNetv2_train")
    parser.add_argument("configuration", help="configuration to train (3d_fullres for the FOMO plans)")
    parser.add_argument("fold", help="fold of the cross-validation (0-4) or 'all'")
    parser.add_argument("-tr", default=DEFAULT_TRAINER, help=f"FOMO trainer class (default {DEFAULT_TRAINER})")
    parser.add_argument("-p", default=DEFAULT_PLANS, help=f"plans identifier (default {DEFAULT_PLANS})")
    parser.add_argument("--npz", action="store_true", help="also save the final validation's softmax as .npz")
    parser.add_argument("--c", action="store_true", help="continue from the latest checkpoint")
    parser.add_argument("--val", action="store_true", help="only run the validation of a finished training")
    parser.add_argument("--val_best", action="store_true",
                        help="validate with checkpoint_best.pth instead of checkpoint_final.pth")
    parser.add_argument("--disable_checkpointing", action="store_true", help="write no checkpoints")
    parser.add_argument("-device", choices=sorted(BACKENDS), default="cuda",
                        help="cuda: GPU $LOCAL_RANK, NCCL (default); cpu: gloo, for tests and debugging")
    return parser


def check_launched_by_torchrun(environ: Mapping[str, str]) -> None:
    """Refuse to start outside torchrun: without its variables there is no process group to join."""
    missing = [name for name in TORCHRUN_VARS if name not in environ]
    if missing:
        raise FomoInputError(f"{', '.join(missing)} not set: start fomo_train_ddp with torchrun (one process per GPU, "
                             "e.g. `torchrun --nproc-per-node 4 $(which fomo_train_ddp) ...`); on one machine "
                             "`nnUNetv2_train ... -num_gpus N` does the same")


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    check_launched_by_torchrun(os.environ)
    # nnU-Net finds the trainer by name through this variable (set before nnU-Net reads it)
    os.environ[EXT_TRAINER_VAR] = ext_trainer_value(os.environ.get(EXT_TRAINER_VAR))
    import torch
    import torch.distributed as dist
    from nnunetv2.run.run_training import run_training

    from nnunet_ext.trainers import TRAINERS
    from nnunet_ext.trainers.base import LOCAL_RANK_ENV

    if args.tr not in TRAINERS:
        raise FomoInputError(f"-tr {args.tr}: fomo_train_ddp trains the FOMO trainers (e.g. {DEFAULT_TRAINER}); "
                             "nnU-Net's own trainers take nnUNetv2_train -num_gpus on one machine")
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ[LOCAL_RANK_ENV]))
        # as nnUNetv2_train on a GPU: more CPU threads do not help and compete with the data augmentation workers
        torch.set_num_threads(1)
        torch.set_num_interop_threads(1)
    dist.init_process_group(BACKENDS[device.type], init_method="env://")
    try:
        # one process of the job: nnU-Net's single-process path, which sees the process group (``is_ddp``)
        run_training(args.dataset_name_or_id, args.configuration, args.fold, args.tr, args.p,
                     export_validation_probabilities=args.npz, continue_training=args.c, only_run_validation=args.val,
                     disable_checkpointing=args.disable_checkpointing, val_with_best=args.val_best, device=device)
    finally:
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    main()
