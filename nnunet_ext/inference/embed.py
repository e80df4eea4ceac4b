"""``fomo_embed``: one fixed-length embedding per case from a (pretrained) encoder, for linear probing.

The cheapest way to ask what a checkpoint knows: one forward pass of the frozen encoder per scan, no training.
Each case of a planned dataset (``fomo_plan_and_preprocess``: nnU-Net's preprocessed volumes, normalised as the
encoder was pretrained) goes through the encoder (a FOMO25 UNet or a FOMO26 / nnssl residual-encoder U-Net) whole;
the deepest level is averaged over the volume (FOMO26's linear-probing embedding; ``--pool-levels`` / ``--pooling``
pool more, as the heads can). A 1-channel encoder (a pretrained checkpoint) embeds every channel (scan) of a case on
its own and the parts are concatenated, so every case of a dataset gets a vector of one length. Written:
``<case>.npy`` (1-D float32, the FOMO26 format), ``embeddings.csv`` (case, subject, target, fold) and
``embeddings.json`` (the encoder, the pooling, the folds), which ``fomo_linear_probe`` reads.
"""

from __future__ import annotations

import argparse
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
from tqdm import tqdm

from nnunet_ext.dataset_conversion.splits import SPLITS_FILE
from nnunet_ext.dataset_conversion.tasks import CLASSIFICATION, FOMO_KEY, REGRESSION
from nnunet_ext.errors import FomoInputError, cli_entry
from nnunet_ext.inference.runtime import AUTO_DEVICE, DEVICE_CHOICES, resolve_device
from nnunet_ext.networks.heads import POOLINGS
from nnunet_ext.networks.resenc import FomoResEncUNet
from nnunet_ext.networks.task_network import EncoderWithTop
from nnunet_ext.networks.unet import DEFAULT_HEAD_POOLING, FomoUNet
from nnunet_ext.pretrained import fomo_layout, load_fomo_state_dict, resenc_layout, transfer_fomo_weights
from nnunet_ext.pretrained.key_mapping import DEFAULT_CHANNEL_ADAPTATION, to_fomo_names
from nnunet_ext.pretrained.resenc_mapping import transfer_resenc_weights
from nnunet_ext.trainers.case_validation import pooled_features_whole_case
from nnunet_ext.utils.files import atomic_write_bytes, atomic_write_csv, atomic_write_json, require_output_folder
from nnunet_ext.utils.nnunet_paths import DEFAULT_CONFIGURATION, DEFAULT_PLANS

EMBEDDINGS_JSON = "embeddings.json"
EMBEDDINGS_CSV = "embeddings.csv"
#: Task types a linear probe can fit (one target per case).
PROBED_TASK_TYPES = (CLASSIFICATION, REGRESSION)
#: Seed of the random encoder (``--random-encoder``), the baseline that shows what pretraining added.
RANDOM_ENCODER_SEED = 0


def build_embedder(checkpoint: Path | None, random_filters: int | None, pool_levels: Sequence[int] | None,
                   pooling: str, trust_checkpoint: bool = False) -> tuple[EncoderWithTop, dict[str, Any]]:
    """The encoder (with a pooling head whose features are the embedding) and a description of where it came from.

    From ``checkpoint`` (a FOMO25 UNet, a FOMO26 / nnssl residual-encoder U-Net, or an nnU-Net checkpoint of our
    trainers), or a FOMO25 UNet He-initialised with ``random_filters`` starting filters (seeded). ``pool_levels``
    None: the deepest encoder level."""
    if checkpoint is None:
        torch.manual_seed(RANDOM_ENCODER_SEED)
        network = FomoUNet(fomo_layout.PRETRAINING_CHANNELS, 1, starting_filters=random_filters,
                           task_type=CLASSIFICATION, **_head_options(pool_levels, pooling))
        network.apply(network.initialize)
        return network.eval(), {"encoder": "random", "starting_filters": random_filters, "seed": RANDOM_ENCODER_SEED}
    state_dict, metadata = load_fomo_state_dict(checkpoint, trust_checkpoint)
    unet = fomo_layout.detect_layout(to_fomo_names(state_dict)[0])
    if unet is not None:
        network = FomoUNet(unet.input_channels, 1, starting_filters=unet.starting_filters, task_type=CLASSIFICATION,
                           **_head_options(pool_levels, pooling))
        report = transfer_fomo_weights(network, state_dict, checkpoint=checkpoint)
        source = {"architecture": "unet", "starting_filters": unet.starting_filters,
                  "input_channels": unet.input_channels}
    else:
        detected = resenc_layout.detect_layout(state_dict)
        if detected is None:
            raise FomoInputError("no FOMO25 UNet encoder (encoder.in_conv stem) and no FOMO26 / nnssl residual "
                                 "encoder in this checkpoint", checkpoint)
        layout = detected[1]
        network = FomoResEncUNet(layout.input_channels, 1, layout.features, layout.blocks, layout.decoder_convs,
                                 task_type=CLASSIFICATION, **_head_options(pool_levels, pooling))
        report = transfer_resenc_weights(network, state_dict, DEFAULT_CHANNEL_ADAPTATION, checkpoint=checkpoint)
        source = {"architecture": "resenc_unet", "features_per_stage": list(layout.features),
                  "blocks_per_stage": list(layout.blocks), "starting_filters": layout.features[0],
                  "input_channels": layout.input_channels}
    return network.eval(), {"encoder": str(checkpoint.resolve()), "sha256": report.sha256,
                            "format": metadata["format"], **source, "transferred": report.transferred}


def _head_options(pool_levels: Sequence[int] | None, pooling: str) -> dict[str, Any]:
    """The pooling head's options; levels left to the network's default (its deepest) when None."""
    return {"head_pooling": pooling, **({} if pool_levels is None else {"head_pool_levels": tuple(pool_levels)})}


def embed_volume(network: EncoderWithTop, volume: np.ndarray, device: torch.device) -> np.ndarray:
    """The embedding of one case [C, X, Y, Z]: each channel alone through a 1-channel encoder (concatenated), or
    every channel at once through an encoder with the case's channels."""
    data = torch.from_numpy(np.asarray(volume, dtype=np.float32))
    parts = [data[c:c + 1] for c in range(data.shape[0])] if network.input_channels == 1 else [data]
    features = [pooled_features_whole_case(network, part.to(device)).cpu() for part in parts]
    return torch.cat(features).numpy().astype(np.float32)


def case_folds(splits: Sequence[dict]) -> dict[str, int]:
    """Case -> the fold whose validation part holds it."""
    return {case: index for index, fold in enumerate(splits) for case in fold["val"]}


def embed_dataset(dataset: str, output: Path, checkpoint: Path | None, random_filters: int | None,
                  pool_levels: Sequence[int] | None, pooling: str, device: torch.device, plans: str = DEFAULT_PLANS,
                  configuration: str = DEFAULT_CONFIGURATION, trust_checkpoint: bool = False) -> dict[str, Any]:
    """Embed every preprocessed training case of ``dataset`` into ``output``; returns the index written."""
    base = Path(os.environ.get("nnUNet_preprocessed") or "")
    try:
        name = maybe_convert_to_dataset_name(dataset)
    except RuntimeError as e:
        raise FomoInputError(str(e).splitlines()[0]) from None
    folder = base / name
    plans_file, dataset_json_file = folder / f"{plans}.json", folder / "dataset.json"
    if not plans_file.is_file():
        raise FomoInputError("no such plans: plan the dataset with fomo_plan_and_preprocess (and check -p)", plans_file)
    dataset_json = json.loads(dataset_json_file.read_text())
    fomo = dataset_json.get(FOMO_KEY) or {}
    if fomo.get("task_type") not in PROBED_TASK_TYPES:
        raise FomoInputError(f"a linear probe needs one target per case (classification or regression), and this is "
                             f"a {fomo.get('task_type') or 'non-FOMO'} dataset", dataset_json_file)
    data_folder = folder / PlansManager(str(plans_file)).get_configuration(configuration).data_identifier
    if not data_folder.is_dir():
        raise FomoInputError("not preprocessed yet: run fomo_plan_and_preprocess", data_folder)
    splits = json.loads((folder / SPLITS_FILE).read_text()) if (folder / SPLITS_FILE).is_file() else []
    if not splits:
        raise FomoInputError("no subject-grouped folds to probe with: convert the dataset with fomo_convert",
                             folder / SPLITS_FILE)
    cases = infer_dataset_class(str(data_folder))(str(data_folder))
    network, encoder = build_embedder(checkpoint, random_filters, pool_levels, pooling, trust_checkpoint)
    network.to(device)
    require_output_folder(output)
    folds, targets, subjects = case_folds(splits), fomo["targets"], fomo["subjects"]
    rows, dimension = [], None
    for case in tqdm(sorted(cases.identifiers), desc="embedding cases"):
        embedding = embed_volume(network, cases.load_case(case)[0][:], device)
        dimension = dimension or embedding.size
        buffer = io.BytesIO()
        np.save(buffer, embedding)
        atomic_write_bytes(output / f"{case}.npy", buffer.getvalue())
        rows.append({"case": case, "subject": subjects[case], "target": targets[case], "fold": folds[case]})
    atomic_write_csv(output / EMBEDDINGS_CSV, rows)
    index = {"dataset": name, "task_type": fomo["task_type"], "plans": plans, "configuration": configuration,
             "pool_levels": list(network.head.pool_levels), "pooling": pooling, "dimension": int(dimension), **encoder,
             "cases": rows}
    atomic_write_json(output / EMBEDDINGS_JSON, index)
    return index


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fomo_embed", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="planned dataset (name or id) whose cases to embed")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", type=Path, help="FOMO checkpoint (or an nnU-Net checkpoint_*.pth of ours)")
    source.add_argument("--random-encoder", type=int, metavar="FILTERS",
                        help="a randomly initialised encoder with this many starting filters (the baseline)")
    parser.add_argument("-o", "--output", type=Path, required=True, help="folder for <case>.npy and the tables")
    parser.add_argument("-p", "--plans", default=DEFAULT_PLANS, help="plans identifier")
    parser.add_argument("-c", "--configuration", default=DEFAULT_CONFIGURATION, help="nnU-Net configuration")
    parser.add_argument("--pool-levels", type=int, nargs="+", metavar="LEVEL",
                        help="encoder levels pooled into the embedding (default: the deepest, 4 for a UNet, 5 for a "
                             "residual-encoder U-Net)")
    parser.add_argument("--pooling", choices=POOLINGS, default=DEFAULT_HEAD_POOLING, help="global pooling per level")
    parser.add_argument("-device", "--device", default=AUTO_DEVICE, choices=DEVICE_CHOICES,
                        help=f"device ({AUTO_DEVICE}: cuda when a GPU is available, else cpu)")
    parser.add_argument("--trust-checkpoint", action="store_true", help="load a checkpoint that pickles objects "
                        "outside the safe list (it could run code)")
    return parser


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    """Console script ``fomo_embed``."""
    args = _parser().parse_args(argv)
    if args.random_encoder is not None and args.random_encoder < 1:
        raise FomoInputError(f"--random-encoder needs a positive number of filters, got {args.random_encoder}")
    index = embed_dataset(args.dataset, args.output, args.checkpoint, args.random_encoder, args.pool_levels,
                          args.pooling, resolve_device(args.device), args.plans, args.configuration,
                          args.trust_checkpoint)
    print(f"wrote {len(index['cases'])} embeddings of length {index['dimension']} to {args.output}")
    return 0
