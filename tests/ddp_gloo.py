"""nnU-Net's multi-GPU training path (``run_training.run_ddp``, one process per rank) on the CPU.

nnU-Net hard-codes CUDA in three places of that path; each rank patches exactly those and nothing else: the NCCL
process group (gloo instead), ``torch.cuda.set_device``, and the CUDA device ``run_ddp`` builds the trainer for
(the CPU instead; our trainers then keep the CPU, drop the CUDA gradient scaler and wrap the network for DDP on it).
Each rank seeds torch with its rank first: ranks whose random streams differ (anything that seeds by rank, each
GPU's own generator) must still end with the same weights, and a test must not pass only because two processes
started from the same default seed draw the same "random" layers. An optional ``setup`` function runs in every rank
next (e.g. to record what each rank does). Every rank then dumps its parameters and its logged values at the end of
training, so that a test can check that the ranks agree.

The ranks are forked from a fork server that imported the heavy third-party libraries once (``fresh_process``'s
list, never nnU-Net, which reads its folders from the environment when imported), instead of spawned, each paying
those imports again; each rank takes the environment of the test that starts it, as a spawned process would, and
starts nnU-Net's worker pools as that test does (``worker_pools``).
"""

from __future__ import annotations

import math
import multiprocessing
import os
import socket
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import worker_pools
from fresh_process import PRELOADED

#: Each rank's torch seed is this plus its rank.
RANK_SEED_OFFSET = 1000
#: The network's state and the logger's values of each rank, written where the test asks.
RANK_DUMP = "rank{rank}.pt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world_size: int, port: int, dump_folder: str, env: dict, args: tuple,
          setup: Optional[Callable[[], None]], pool_start: str) -> None:
    os.environ.clear()
    os.environ.update(env)
    worker_pools.install(pool_start)
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
    torch.set_num_threads(1)
    torch.manual_seed(RANK_SEED_OFFSET + rank)
    import nnunetv2.run.run_training as run_training
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

    import nnunet_ext.trainers  # noqa: F401  (our normalisation registered in this process too)
    from nnunet_ext.trainers.base import unwrap_network

    run_training.setup_ddp = lambda rank, world_size: dist.init_process_group("gloo", rank=rank,
                                                                              world_size=world_size)
    torch.cuda.set_device = lambda *a, **k: None
    get_trainer = run_training.get_trainer_from_args
    run_training.get_trainer_from_args = lambda *a, **k: get_trainer(*a, **k, device=torch.device("cpu"))
    base = trainer_module.nnUNetTrainer
    original_end = base.on_train_end

    def dump_then_end(self):
        state = {k: v.detach().clone() for k, v in unwrap_network(self.network).state_dict().items()}
        torch.save({"state": state, "logging": dict(self.logger.local_logger.my_fantastic_logging)},
                   Path(dump_folder) / RANK_DUMP.format(rank=rank))
        original_end(self)

    base.on_train_end = dump_then_end
    if setup is not None:
        setup()
    run_training.run_ddp(rank, *args, world_size)


def train_ddp_on_cpu(dataset: str, configuration: str, fold, trainer: str, dump_folder: Path, env: dict,
                     world_size: int = 2, plans: str = "nnUNetPlans",
                     setup: Optional[Callable[[], None]] = None) -> list[dict]:
    """Train through ``run_ddp`` with ``world_size`` gloo ranks; returns each rank's dump (see :data:`RANK_DUMP`).
    ``setup`` (a module-level function, pickled to the ranks) runs in every rank before training."""
    # run_ddp's arguments after the rank: dataset, configuration, fold, trainer, plans, disable_checkpointing,
    # continue, only validation, pretrained weights, npz, validation with the best checkpoint
    args = (dataset, configuration, fold, trainer, plans, False, False, False, None, False, False)
    multiprocessing.set_forkserver_preload(list(PRELOADED))
    mp.start_processes(_rank, args=(world_size, free_port(), str(dump_folder), {**os.environ, **env}, args, setup,
                                      worker_pools.current()),
                       nprocs=world_size, join=True, start_method="forkserver")
    return [torch.load(dump_folder / RANK_DUMP.format(rank=rank), weights_only=False) for rank in range(world_size)]


def assert_ranks_agree(ranks: list[dict], metric: str) -> list[float]:
    """Identical weights on both ranks and the same finite ``metric`` in every epoch; returns its history."""
    assert ranks[0]["state"].keys() == ranks[1]["state"].keys()
    differing = [k for k in ranks[0]["state"] if not torch.equal(ranks[0]["state"][k], ranks[1]["state"][k])]
    assert not differing, f"the ranks hold different {differing[:3]}"
    history = [rank["logging"][metric] for rank in ranks]
    assert history[0] == history[1] and history[0] and all(math.isfinite(v) for v in history[0])
    return history[0]
