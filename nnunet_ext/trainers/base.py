"""``FomoTrainerBase``: what every FOMO fine-tuning trainer adds to nnU-Net's ``nnUNetTrainer``.

- the network is rebuilt from the plans alone (``build_network_architecture``), for training and for
  nnU-Net's predictor;
- the pretrained checkpoint named in the plans (or by ``$FOMO_PRETRAINED``) is loaded at the start of a new
  training, never when ``--c`` resumes one, and its transfer report is saved in the fold folder;
- AdamW with linear warm-up and cosine annealing, stepped per epoch as nnU-Net steps its scheduler;
- ``checkpoint_best.pth`` follows one logged validation metric (:attr:`FomoTrainerBase.selection_metric`), and
  training stops early once it has not improved for ``early_stopping_patience`` epochs;
- the progress figures are redrawn at most every :data:`PROGRESS_PLOT_INTERVAL_S` seconds and at the end of
  training, not after every epoch as nnU-Net does;
- under DDP (``nnUNetv2_train -num_gpus N`` or ``fomo_train_ddp`` under torchrun): the GPU is ``$LOCAL_RANK``
  (nnU-Net takes the global rank, wrong beyond one machine) and the CPU with gloo works too; the wrapper tolerates
  parameters without a gradient (:attr:`FomoTrainerBase.ddp_find_unused_parameters`); the weights drawn or loaded
  after the wrap (pretrained transfer, fresh output layers) are broadcast from rank 0; a planned batch smaller than
  the number of ranks is refused before training.

Task trainers (segmentation, classification, regression) subclass it and set the class attributes documented
below; strategy and length variants (``nnunet_ext.trainers.variants``) override one method each.
"""

from __future__ import annotations

import math
import os
import sys
import time
from contextlib import contextmanager
from os.path import join
from pathlib import Path
from typing import Any, ClassVar, Iterable, Iterator, TypeVar

import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as nnunet_trainer_module
import torch
import torch.distributed as dist
from nnunetv2.paths import nnUNet_preprocessed
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels
from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn
from torch._dynamo import OptimizedModule
from torch.nn.parallel import DistributedDataParallel

from nnunet_ext.dataset_conversion.tasks import SEGMENTATION
from nnunet_ext.errors import EXIT_BAD_INPUT, FomoInputError
from nnunet_ext.networks import FOMO_N_STAGES
from nnunet_ext.preprocessing.fomo_plans import FomoPlansBlock
from nnunet_ext.preprocessing.planner import patch_size_problem
from nnunet_ext.trainers.model_selection import EARLY_STOPPING_PATIENCE, epochs_since_best, patience_exhausted
from nnunet_ext.trainers.pretrained_loading import (
    PRETRAINED_ENV_VAR,
    PretrainedSource,
    TRANSFER_REPORT_FILENAME,
    load_pretrained,
    resolve_pretrained_source,
)
from nnunet_ext.trainers.schedules import WarmupCosineLRScheduler, warmup_epochs_for
from nnunet_ext.utils.cpu_memory import retain_freed_memory

#: Peak learning rate and weight decay of AdamW (the FOMO baseline's fine-tuning values).
FINETUNE_LR = 1e-4
FINETUNE_WEIGHT_DECAY = 3e-5
#: Epochs of a full run (nnU-Net's 250 iterations each): 62,500 steps, close to the baseline's 50,000, since
#: fine-tuning a pretrained network needs far fewer than nnU-Net's 250,000 from scratch.
FINETUNE_NUM_EPOCHS = 250
#: nnU-Net's logged EMA of the validation pseudo-Dice, its own criterion for ``checkpoint_best.pth``.
NNUNET_EMA_DICE = "ema_fg_dice"
CHECKPOINT_BEST = "checkpoint_best.pth"
#: nnU-Net's command-line flag for its own (strict, nnU-Net-checkpoint-only) weight loading.
NNUNET_PRETRAINED_FLAG = "-pretrained_weights"
#: nnU-Net's command-line flag that only re-runs the validation of a finished training.
NNUNET_VALIDATION_FLAG = "--val"
#: nnU-Net's training command (its console script's name).
NNUNET_TRAIN_COMMAND = "nnUNetv2_train"
#: Least time between two redraws of the progress figures. nnU-Net redraws progress.png after every epoch: about
#: a second of matplotlib, negligible next to a GPU epoch of minutes, but 40% of a 2-second CPU demo epoch.
PROGRESS_PLOT_INTERVAL_S = 60.0
#: Variable torchrun (and ``srun``-launched torchrun) sets to the process's index on its own machine: its GPU.
LOCAL_RANK_ENV = "LOCAL_RANK"
#: Rank whose weights every rank adopts after they were (re-)initialised outside DDP's own synchronisation.
SOURCE_RANK = 0

T = TypeVar("T")


@contextmanager
def progress_plot_suppressed(logger: Any) -> Iterator[None]:
    """Within the block, ``logger.plot_progress_png`` does nothing (nnU-Net's ``on_epoch_end`` calls it)."""
    logger.plot_progress_png = lambda *args, **kwargs: None
    try:
        yield
    finally:
        del logger.plot_progress_png  # the instance attribute hid the class's method


class EarlyStopping(Exception):
    """Raised between epochs when the selection metric ran out of patience; ends the epoch loop."""


def unwrap_network(network: nn.Module) -> nn.Module:
    """The bare network under nnU-Net's DDP and ``torch.compile`` wrappers (where its state-dict keys live)."""
    if isinstance(network, DistributedDataParallel):
        network = network.module
    if isinstance(network, OptimizedModule):
        network = network._orig_mod
    return network


def ddp_active() -> bool:
    """Whether this process is one rank of an initialised process group (nnU-Net's ``is_ddp``)."""
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of ranks training together; 1 without DDP."""
    return dist.get_world_size() if ddp_active() else 1


def rank() -> int:
    """This process's global rank; 0 without DDP."""
    return dist.get_rank() if ddp_active() else 0


def gathered(part: T) -> list[T]:
    """Every rank's ``part`` (any picklable object), in rank order, on every rank; ``[part]`` without DDP."""
    if not ddp_active():
        return [part]
    parts: list[Any] = [None] * world_size()
    dist.all_gather_object(parts, part)
    return parts


def ddp_device(requested: torch.device) -> torch.device:
    """The device of this rank: GPU ``$LOCAL_RANK`` for a CUDA run (the global rank where nothing sets it, as with
    nnU-Net's own one-machine launcher), the CPU for a CPU run."""
    if requested.type != "cuda":
        return requested
    return torch.device("cuda", int(os.environ.get(LOCAL_RANK_ENV, rank())))


def broadcast_tensors(tensors: Iterable[torch.Tensor], source: int = SOURCE_RANK) -> None:
    """Give every rank ``source``'s values of ``tensors`` (a network's parameters or buffers; in place)."""
    with torch.no_grad():
        for tensor in tensors:
            dist.broadcast(tensor.data, source)


@contextmanager
def ddp_wrapper_of(trainer: "FomoTrainerBase") -> Iterator[None]:
    """Within the block, nnU-Net's ``initialize`` wraps the network for DDP on ``trainer``'s device (nnU-Net names
    the global rank as the GPU, and a GPU even on the CPU) and with its ``ddp_find_unused_parameters``."""
    nnunet_wrapper = nnunet_trainer_module.DDP

    def wrap(network: nn.Module, device_ids: Any = None) -> DistributedDataParallel:
        return DistributedDataParallel(
            network, device_ids=[trainer.device.index] if trainer.device.type == "cuda" else None,
            find_unused_parameters=trainer.ddp_find_unused_parameters)

    nnunet_trainer_module.DDP = wrap
    try:
        yield
    finally:
        nnunet_trainer_module.DDP = nnunet_wrapper


def _nnunet_pretrained_flag_given(argv: list[str]) -> bool:
    """Whether the command line carries nnU-Net's ``-pretrained_weights``, in either argparse spelling."""
    return any(arg == NNUNET_PRETRAINED_FLAG or arg.startswith(NNUNET_PRETRAINED_FLAG + "=") for arg in argv)


def _validation_only(argv: list[str]) -> bool:
    """Whether the command line carries nnU-Net's ``--val`` (validation of a finished training, no weights loaded)."""
    return NNUNET_VALIDATION_FLAG in argv


def _plans_file(plans_manager: PlansManager) -> str | None:
    """The plans file nnU-Net read (``nnUNet_preprocessed/<dataset>/<plans name>.json``), None if not set."""
    if not nnUNet_preprocessed.is_set():
        return None
    return join(nnUNet_preprocessed, plans_manager.dataset_name, plans_manager.plans_name + ".json")


@contextmanager
def errors_reported_as_in_our_commands() -> Iterator[None]:
    """Inside nnU-Net's ``nnUNetv2_train``, refused input ends the process as our own commands end it (``cli_entry``):
    one ``error: <file>: <what>`` line and exit status 2. nnU-Net's command has no such wrapper, and the traceback
    would bury the message. Elsewhere (the Python API, the demo, tests) the :class:`FomoInputError` propagates."""
    try:
        yield
    except FomoInputError as e:
        if Path(sys.argv[0]).name != NNUNET_TRAIN_COMMAND:
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT) from None


class FomoTrainerBase(nnUNetTrainer):
    """Base of the FOMO fine-tuning trainers (see the module docstring).

    Class attributes for task trainers:
        task_type: the plans' ``fomo.task_type`` this trainer trains (checked at construction).
        selection_metric: logger key of the per-epoch validation metric that picks ``checkpoint_best.pth`` and
            drives early stopping. The trainer must log exactly one value per epoch under it (in
            ``on_validation_epoch_end``); a key nnU-Net's logger does not know is added at construction.
        selection_higher_is_better: direction of ``selection_metric`` (False for an error such as MAE).
        starts_from_pretrained: False only for the ``_Scratch`` variants.
        ddp_find_unused_parameters: under DDP, some parameters may get no gradient in an iteration (deep
            supervision off leaves the coarser output convs unused, frozen variants the encoder, a pooling head the
            stages it does not read); DDP then has to look for them after every backward pass, or it stops at the
            second iteration. On for every trainer: the search costs a walk over the autograd graph per step, small
            next to a 3D U-Net's backward pass, and a trainer that turns it off must use every parameter in every
            step, with every network the plans may name.

    Hooks for variants: :meth:`parameter_groups` (optimiser groups and their learning rates),
    ``on_train_epoch_start`` (e.g. freezing), and nnU-Net's instance attributes set in ``__init__``
    (``num_epochs``, ``num_iterations_per_epoch``, ``early_stopping_patience``, ...).
    """

    task_type: ClassVar[str]
    selection_metric: ClassVar[str] = NNUNET_EMA_DICE
    selection_higher_is_better: ClassVar[bool] = True
    starts_from_pretrained: ClassVar[bool] = True
    ddp_find_unused_parameters: ClassVar[bool] = True

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        with errors_reported_as_in_our_commands():
            # nnU-Net's __init__ creates the fold folder: refused input must leave nothing behind
            self.fomo_plans = self._check_inputs(plans, configuration, dataset_json)
            super().__init__(plans, configuration, fold, dataset_json, device)
        if self.is_ddp:
            # nnU-Net puts every rank on GPU <global rank>, with a CUDA gradient scaler
            self.device = ddp_device(device)
            if self.device.type != "cuda":
                self.grad_scaler = None
        if self.device.type == "cpu" and retain_freed_memory():
            self.print_to_log_file("Training on the CPU: freed memory stays in the process (see utils/cpu_memory.py)")
        self.initial_lr = FINETUNE_LR
        self.weight_decay = FINETUNE_WEIGHT_DECAY
        self.num_epochs = FINETUNE_NUM_EPOCHS
        # The pretrained decoder ends in one full-resolution output; deep-supervision heads would start untrained.
        self.enable_deep_supervision = False
        self.early_stopping_patience: int | None = EARLY_STOPPING_PATIENCE
        # nnU-Net's logger accepts only keys present in its dict (see nnunet_logger.LocalLogger.log).
        self.logger.local_logger.my_fantastic_logging.setdefault(self.selection_metric, [])
        self._last_progress_plot = -math.inf

    @staticmethod
    def build_network_architecture(plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """The plans' architecture (``FomoUNet``), with the task's number of outputs.

        Segmentation gets nnU-Net's ``num_output_channels`` (one per label); image-level tasks get the plans'
        ``fomo.num_outputs`` (nnU-Net counts the labels of their brain-mask label maps, which are not outputs).
        """
        fomo = FomoPlansBlock.from_configuration(configuration_manager.configuration)
        num_outputs = num_output_channels if fomo.task_type == SEGMENTATION else fomo.num_outputs
        return get_network_from_plans(
            configuration_manager.network_arch_class_name,
            configuration_manager.network_arch_init_kwargs,
            configuration_manager.network_arch_init_kwargs_req_import,
            num_input_channels,
            num_outputs,
            allow_init=True,
            deep_supervision=enable_deep_supervision)

    @classmethod
    def _check_inputs(cls, plans: dict, configuration: str, dataset_json: dict) -> FomoPlansBlock:
        """Refuse, before nnU-Net creates anything, what would fail later: nnU-Net's ``-pretrained_weights``, plans
        of another task or with a patch the network cannot train on, and a pretrained checkpoint that does not fit
        the network (when this run will load it). Returns the plans' ``fomo`` block."""
        if _nnunet_pretrained_flag_given(sys.argv[1:]):
            # nnU-Net hands that flag's file to a module-level loader after initialize() (run_training.py,
            # maybe_load_checkpoint), never to the trainer: the command line is the only place to see it. Its strict
            # loader reads nnU-Net checkpoints only, and the weights it did load would be replaced by ours.
            raise FomoInputError(
                f"{cls.__name__} loads pretrained weights itself; nnU-Net's {NNUNET_PRETRAINED_FLAG} cannot "
                f"read FOMO checkpoints. Drop the flag and name the checkpoint at planning "
                f"(`fomo_plan_and_preprocess --pretrained CKPT`) or with {PRETRAINED_ENV_VAR}=CKPT (an nnU-Net "
                f"checkpoint_*.pth works there too)")
        plans_manager = PlansManager(plans)
        configuration_manager = plans_manager.get_configuration(configuration)
        fomo_plans = FomoPlansBlock.from_configuration(configuration_manager.configuration)
        if fomo_plans.task_type != cls.task_type:
            raise FomoInputError(f"{cls.__name__} trains {cls.task_type} tasks, but these plans describe a "
                                 f"{fomo_plans.task_type} task")
        n_stages = configuration_manager.network_arch_init_kwargs.get("n_stages", FOMO_N_STAGES)  # FomoUNet's default
        if configuration_manager.batch_size < world_size():
            # nnU-Net's own check is an assertion deep inside initialize()
            raise FomoInputError(f"configuration {configuration!r}: batch_size {configuration_manager.batch_size} "
                                 f"cannot be split over {world_size()} DDP ranks; re-plan with "
                                 f"fomo_plan_and_preprocess --batch-size {world_size()} (or a multiple)",
                                 _plans_file(plans_manager))
        problem = patch_size_problem(configuration_manager.patch_size, n_stages)
        if problem is not None:
            raise FomoInputError(f"configuration {configuration!r}: patch_size {list(configuration_manager.patch_size)}"
                                 f" {problem}; re-plan with fomo_plan_and_preprocess --patch-size",
                                 _plans_file(plans_manager))
        source = cls.pretrained_source(fomo_plans)
        if source is not None and not plans.get("continue_training") and not _validation_only(sys.argv[1:]):
            # the transfer on_train_start will make, tried on a throwaway copy of the network
            network = cls.build_network_architecture(
                plans_manager, configuration_manager,
                determine_num_input_channels(plans_manager, configuration_manager, dataset_json),
                plans_manager.get_label_manager(dataset_json).num_segmentation_heads, enable_deep_supervision=False)
            load_pretrained(network, source, fomo_plans.channel_adaptation)
        return fomo_plans

    @classmethod
    def pretrained_source(cls, fomo_plans: FomoPlansBlock) -> PretrainedSource | None:
        """The checkpoint a new training starts from (see ``resolve_pretrained_source``); None: nnU-Net's random
        initialisation (the ``_Scratch`` variants)."""
        return resolve_pretrained_source(fomo_plans.pretrained) if cls.starts_from_pretrained else None

    def initialize(self) -> None:
        """nnU-Net's initialisation, with refused input reported as by our commands (see
        :func:`errors_reported_as_in_our_commands`)."""
        with errors_reported_as_in_our_commands(), ddp_wrapper_of(self):
            super().initialize()

    def parameter_groups(self) -> list[dict[str, Any]]:
        """Optimiser parameter groups; a group's ``lr`` is its peak learning rate (default: one group)."""
        return [{"params": list(self.network.parameters())}]

    def configure_optimizers(self) -> tuple[torch.optim.Optimizer, WarmupCosineLRScheduler]:
        """AdamW over :meth:`parameter_groups`, with linear warm-up and cosine annealing per epoch."""
        optimizer = torch.optim.AdamW(self.parameter_groups(), lr=self.initial_lr, weight_decay=self.weight_decay)
        scheduler = WarmupCosineLRScheduler(optimizer, self.warmup_epochs(), self.num_epochs)
        return optimizer, scheduler

    def warmup_epochs(self) -> int:
        """Epochs of linear warm-up before the cosine decay (see ``schedules.warmup_epochs_for``)."""
        return warmup_epochs_for(self.num_epochs)

    def set_deep_supervision_enabled(self, enabled: bool) -> None:
        """nnU-Net switches the decoder's deep supervision; image-level networks have no decoder to switch."""
        if self.task_type == SEGMENTATION:
            super().set_deep_supervision_enabled(enabled)

    def on_train_start(self) -> None:
        """nnU-Net's start of training, then the pretrained weights, unless a checkpoint was restored.

        ``--c`` restores a checkpoint (and its epoch counter) before this runs; loading only while the epoch
        counter is 0 keeps trained weights safe even when ``--c`` finds no checkpoint and starts afresh.
        """
        with errors_reported_as_in_our_commands():
            super().on_train_start()
            if self.current_epoch == 0:
                self._initialise_from_pretrained()
                if self.is_ddp:
                    # DDP synchronised the weights when it wrapped the network; layers the transfer drew afresh
                    # (an output conv, a head) differ between the ranks, and DDP never synchronises them again
                    network = unwrap_network(self.network)
                    broadcast_tensors([*network.parameters(), *network.buffers()])

    def on_validation_epoch_start(self) -> None:
        """nnU-Net's (evaluation mode); under DDP every rank validates with rank 0's buffers (running statistics):
        DDP copies them to the other ranks before each training forward, after which each rank updated its own."""
        super().on_validation_epoch_start()
        if self.is_ddp:
            broadcast_tensors(unwrap_network(self.network).buffers())

    def _initialise_from_pretrained(self) -> None:
        """Transfer the pretrained checkpoint into the network; log and save the transfer report."""
        source = self.pretrained_source(self.fomo_plans)
        if source is None:
            self.print_to_log_file("Training from scratch: no pretrained weights are loaded.")
            return
        report = load_pretrained(unwrap_network(self.network), source, self.fomo_plans.channel_adaptation)
        self.print_to_log_file(f"Pretrained checkpoint named by the {source.origin}:\n{report.summary()}")
        if self.local_rank == 0:
            report.save(join(self.output_folder, TRANSFER_REPORT_FILENAME))

    def _selection_history(self) -> list[float]:
        """The selection metric of every validated epoch (restored with the logger on ``--c``)."""
        return self.logger.get_value(self.selection_metric, step=None)

    def on_epoch_start(self) -> None:
        """Stop before the next epoch once the selection metric has run out of patience (also after ``--c``)."""
        history = self._selection_history()
        if patience_exhausted(history, self.selection_higher_is_better, self.early_stopping_patience):
            raise EarlyStopping(f"no better {self.selection_metric} for {self.early_stopping_patience} epochs")
        super().on_epoch_start()

    def on_epoch_end(self) -> None:
        """nnU-Net's end of epoch, with ``checkpoint_best.pth`` chosen by :attr:`selection_metric`."""
        # nnU-Net's on_epoch_end saves checkpoint_best.pth whenever its EMA pseudo-Dice beats self._best_ema;
        # the metric-agnostic rule below replaces it for every task, so nnU-Net's comparison must never succeed.
        self._best_ema = math.inf
        with progress_plot_suppressed(self.logger):
            super().on_epoch_end()
        if time.monotonic() - self._last_progress_plot >= PROGRESS_PLOT_INTERVAL_S:
            self.plot_progress()
        history = self._selection_history()
        if epochs_since_best(history, self.selection_higher_is_better) == 0:
            self.print_to_log_file(f"New best {self.selection_metric}: {history[-1]:.4f}")
            # super() has advanced the epoch counter; the checkpoint must record the finished epoch, as
            # nnU-Net's own on_train_end does for checkpoint_final.pth.
            self.current_epoch -= 1
            self.save_checkpoint(join(self.output_folder, CHECKPOINT_BEST))
            self.current_epoch += 1

    def plot_progress(self) -> None:
        """Redraw the progress figures: nnU-Net's ``progress.png`` (task trainers add their own)."""
        if self.local_rank == 0:
            self.logger.plot_progress_png(self.output_folder)
        self._last_progress_plot = time.monotonic()

    def on_train_end(self) -> None:
        """Draw the final progress figures, then nnU-Net's end of training (``checkpoint_final.pth``)."""
        self.plot_progress()
        super().on_train_end()

    def run_training(self) -> None:
        """nnU-Net's training loop; an early stop still ends with ``on_train_end`` (``checkpoint_final.pth``)."""
        try:
            super().run_training()
        except EarlyStopping as stop:
            self.print_to_log_file(f"Early stopping before epoch {self.current_epoch}: {stop}")
            self.on_train_end()
