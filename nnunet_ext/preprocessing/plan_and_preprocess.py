"""``fomo_plan_and_preprocess``: nnU-Net's fingerprinting, FOMO planning and preprocessing of one dataset.

It calls nnU-Net's Python API (``nnunetv2.experiment_planning.plan_and_preprocess_api``) with our planner class
(the API's by-name lookup only searches inside nnunetv2). Plans are written as ``nnUNetPlans`` by default, so
that ``nnUNetv2_train DATASET 3d_fullres FOLD -tr FomoFinetuneTrainer`` needs no ``-p``. Running nnU-Net's own
``nnUNetv2_plan_and_preprocess`` afterwards overwrites them (and the preprocessed data): use ``--plans-name``
to keep FOMO plans under another identifier (then pass ``-p`` to nnU-Net's commands).
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
from pathlib import Path
from typing import Optional, Sequence

from nnunetv2.configuration import default_num_processes
from nnunetv2.experiment_planning.plan_and_preprocess_api import (
    extract_fingerprint_dataset,
    plan_experiment_dataset,
    preprocess_dataset,
)
from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
from nnunetv2.utilities.dataset_name_id_conversion import convert_id_to_dataset_name

from nnunet_ext.errors import FomoInputError, cli_entry
from nnunet_ext.networks import DECODER_LAYOUTS
from nnunet_ext.networks.heads import POOLINGS
from nnunet_ext.networks.unet import DEFAULT_HEAD_POOLING
from nnunet_ext.preprocessing.fingerprint import FomoFingerprintExtractor
from nnunet_ext.preprocessing.folders import require_input_folder, require_writable_folder
from nnunet_ext.preprocessing.planner import (
    BATCH_SIZE,
    FULLRES,
    MAX_PATCH_TO_MEDIAN_RATIO,
    MODEL_CHOICES,
    PRETRAINING_SPACING_MM,
    FomoPlanner,
    FomoPlanSettings,
    check_checkpoint_fits,
    validate_patch_size,
    validate_spacing,
)
from nnunet_ext.preprocessing.registration import register_with_nnunet
from nnunet_ext.pretrained.key_mapping import CHANNEL_ADAPTATIONS, DEFAULT_CHANNEL_ADAPTATION
from nnunet_ext.utils.arguments import int_at_least, positive_float

log = logging.getLogger(__name__)

#: nnU-Net's environment variables of the folders planning reads and writes (it never touches nnUNet_results).
RAW_VAR = "nnUNet_raw"
PREPROCESSED_VAR = "nnUNet_preprocessed"
#: nnU-Net's default plans identifier: FOMO plans take its place (see the module docstring).
DEFAULT_PLANS_NAME = "nnUNetPlans"


def fomo_plan_and_preprocess(dataset_id: int, settings: FomoPlanSettings = FomoPlanSettings(),
                             plans_name: str = DEFAULT_PLANS_NAME, num_processes: int = default_num_processes,
                             verify_dataset_integrity: bool = False) -> Path:
    """Fingerprint, plan and preprocess dataset ``dataset_id`` (in nnUNet_raw); return the plans file."""
    require_input_folder(RAW_VAR)
    require_writable_folder(PREPROCESSED_VAR)
    try:
        dataset_name = convert_id_to_dataset_name(dataset_id)
    except RuntimeError as e:  # nnU-Net's "could not find a dataset with the ID ..."
        raise FomoInputError(str(e)) from None
    dataset_json_path = Path(nnUNet_raw, dataset_name, "dataset.json")
    check_checkpoint_fits(settings, json.loads(dataset_json_path.read_text()), dataset_json_path)
    # preprocessing, here and in the workers it spawns, must find our normalisation scheme
    register_with_nnunet()
    extract_fingerprint_dataset(dataset_id, FomoFingerprintExtractor, num_processes,
                                check_dataset_integrity=verify_dataset_integrity, clean=True)
    _, plans_identifier = plan_experiment_dataset(dataset_id, functools.partial(FomoPlanner, settings=settings),
                                                  overwrite_plans_name=plans_name)
    preprocess_dataset(dataset_id, plans_identifier, configurations=(FULLRES,), num_processes=[num_processes])
    return Path(nnUNet_preprocessed, dataset_name, f"{plans_identifier}.json")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fomo_plan_and_preprocess",
        description="Plan and preprocess an nnU-Net raw dataset for fine-tuning the FOMO25 foundation model: "
                    "1 mm spacing, FomoUNet, the pretraining normalisation, 3d_fullres only. Writes the plans as "
                    f"{DEFAULT_PLANS_NAME!r} unless --plans-name says otherwise; nnU-Net's own "
                    "nnUNetv2_plan_and_preprocess would overwrite them.")
    parser.add_argument("-d", "--dataset", type=int, required=True, help="dataset ID in nnUNet_raw")
    parser.add_argument("-c", "--configuration", choices=[FULLRES], default=FULLRES,
                        help="configuration to plan; FOMO plans hold 3d_fullres only")
    parser.add_argument("--spacing", type=positive_float, nargs="+", metavar="MM",
                        help="target spacing in mm: one value (isotropic) or three in nnU-Net's array axis order "
                             "(default: 1, the pretraining's; e.g. 2 for CPU budgets and quick experiments, with a "
                             "warning, since the encoder was pretrained at 1 mm)")
    parser.add_argument("--patch-size", type=int, nargs=3, metavar=("X", "Y", "Z"),
                        help="patch size in voxels, in nnU-Net's array axis order, each a multiple of 16, at "
                             f"least 32 and at most {MAX_PATCH_TO_MEDIAN_RATIO:g} x the median image shape (default: "
                             "the field of 160 x 192 x 160 voxels at 1 mm at the planned spacing, capped by the median "
                             "image shape)")
    parser.add_argument("--pretrained", type=Path, metavar="CKPT",
                        help="checkpoint the trainers start from (FOMO25 UNet, FOMO26 resenc Lightning .ckpt, nnssl "
                             "checkpoint, or an nnU-Net checkpoint of ours); its path and sha256 go into the plans")
    parser.add_argument("--model", choices=MODEL_CHOICES, default="unet_b",
                        help="network: the FOMO25 UNet (unet_b: 32 starting filters, unet_xl: 64) or the FOMO26 / "
                             "nnssl residual-encoder U-Net (resenc_unet_b: 6 stages of 32-320 features with 1, 3, 4, "
                             "6, 6, 6 residual blocks, also nnssl's ResEnc-L; resenc_unet_s/_l/_h/_g: the other "
                             "sizes); fomo_inspect_checkpoint names a checkpoint's")
    parser.add_argument("--starting-filters", type=int, metavar="N",
                        help="override the preset's starting filters (a resenc model scales every stage alike; "
                             "small values keep tests fast)")
    parser.add_argument("--decoder-layout", choices=sorted(DECODER_LAYOUTS), default="unet_b_lw_dec",
                        help="convs per decoder block: unet_b_lw_dec 1 (the pretraining default), unet_b 2")
    parser.add_argument("--head-dropout", type=float, default=0.0,
                        help="dropout before the classification / regression head's linear layer")
    parser.add_argument("--head-pool-levels", type=int, nargs="+", metavar="LEVEL",
                        help="encoder levels the classification / regression head pools (0-4 for a UNet, 0-5 for "
                             "a resenc model; default: the bottleneck, 4 or 5)")
    parser.add_argument("--head-pooling", choices=POOLINGS, default=DEFAULT_HEAD_POOLING,
                        help="global pooling of each pooled level: avg (the FOMO baseline's), max (keeps whether a "
                             "pattern occurs anywhere, which instance norm leaves the average blind to) or avgmax "
                             "(both)")
    parser.add_argument("--channel-adaptation", choices=CHANNEL_ADAPTATIONS, default=DEFAULT_CHANNEL_ADAPTATION,
                        help="how the pretrained 1-channel stem takes the task's C channels: first (its kernel on "
                             "channel 0, the others start at zero and learn: channel 0 is an image the encoder has "
                             "seen), average (the kernel / C on every channel: the encoder sees the mean of the "
                             "contrasts, in which e.g. T1 and T2 cancel) or copy (the kernel on every channel)")
    parser.add_argument("--batch-size", type=int_at_least(1), default=BATCH_SIZE, metavar="N",
                        help=f"cases per optimiser step (default {BATCH_SIZE}); DDP splits it over the GPUs, so plan "
                             "GPUs x cases per GPU for `-num_gpus` / fomo_train_ddp (e.g. 8 for 4 GPUs at 2 each)")
    parser.add_argument("--plans-name", default=DEFAULT_PLANS_NAME,
                        help=f"plans identifier (default {DEFAULT_PLANS_NAME!r}, what nnUNetv2_train uses without -p)")
    parser.add_argument("-np", "--num-processes", type=int_at_least(1), default=default_num_processes,
                        help="processes for fingerprinting and preprocessing (default: nnUNet_def_n_proc or 8)")
    parser.add_argument("--verify_dataset_integrity", action="store_true",
                        help="run nnU-Net's dataset integrity check first")
    return parser


@cli_entry
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    spacing = PRETRAINING_SPACING_MM
    if args.spacing is not None:
        if len(args.spacing) not in (1, 3):
            parser.error("--spacing takes one value (isotropic) or three")
        spacing = validate_spacing(args.spacing)
    if spacing != PRETRAINING_SPACING_MM:
        log.warning("planning at %s mm: the FOMO encoder was pretrained at 1 mm, so its filters see anatomy at "
                    "another scale than they learned", " x ".join(f"{s:g}" for s in spacing))
    settings = FomoPlanSettings(
        model=args.model,
        starting_filters=args.starting_filters,
        decoder_layout=args.decoder_layout,
        patch_size=None if args.patch_size is None else validate_patch_size(args.patch_size),
        spacing=spacing,
        pretrained=args.pretrained,
        head_dropout=args.head_dropout,
        head_pool_levels=None if args.head_pool_levels is None else tuple(args.head_pool_levels),
        head_pooling=args.head_pooling,
        channel_adaptation=args.channel_adaptation,
        batch_size=args.batch_size,
    )
    plans_file = fomo_plan_and_preprocess(args.dataset, settings, args.plans_name, args.num_processes,
                                          args.verify_dataset_integrity)
    print(f"FOMO plans: {plans_file}")
    return 0
