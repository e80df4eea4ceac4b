"""Whole-case validation for the case-level tasks: one forward pass per whole preprocessed volume.

nnU-Net validates segmentation on random patches during training and with a sliding window afterwards.
A case-level label belongs to the whole brain, and our classification/regression network ends in global
pooling, so it takes a whole volume of any size: each validation case goes through the network once
(per mirroring), padded so that every voxel survives the encoder's four 2x poolings. The same path serves
the per-epoch metric and ``perform_actual_validation`` (``--val``).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import matplotlib
import numpy as np
import torch

matplotlib.use("agg")  # training machines have no display; nnU-Net's logger does the same
import matplotlib.pyplot as plt  # noqa: E402

from nnunet_ext.utils.files import atomic_write_csv, atomic_write_json, atomic_write_text

PathLike = Union[str, Path]

#: Spatial sizes are padded to a multiple of this: 2 ** 4 for the UNet-B encoder's four max-poolings, so the
#: poolings never drop a border voxel.
SPATIAL_MULTIPLE = 16

#: Value of padded voxels: the background value of the preprocessed images, as nnU-Net pads its patches.
PAD_VALUE = 0.0
#: Index of the first spatial axis of a network input [B, C, X, Y, Z].
_FIRST_SPATIAL_DIM = 2


def pad_to_multiple(volume: torch.Tensor, multiple: int = SPATIAL_MULTIPLE, minimum: int = 0) -> torch.Tensor:
    """Pad the spatial axes of ``volume`` ``[C, *spatial]`` symmetrically up to a multiple of ``multiple``, and to at
    least ``minimum``."""
    pad: List[int] = []
    # F.pad takes (before, after) pairs starting from the LAST axis
    for size in reversed(volume.shape[1:]):
        total = max(-size % multiple, minimum - size)
        pad += [total // 2, total - total // 2]
    return torch.nn.functional.pad(volume, pad, value=PAD_VALUE)


def mirror_combinations(mirror_axes: Optional[Sequence[int]]) -> List[Tuple[int, ...]]:
    """Every subset of the spatial ``mirror_axes`` (the empty one first), as nnU-Net's mirroring TTA uses."""
    axes = tuple(mirror_axes or ())
    return [combo for r in range(len(axes) + 1) for combo in itertools.combinations(axes, r)]


@torch.no_grad()
def forward_whole_case(network: torch.nn.Module, volume: torch.Tensor,
                       mirror_axes: Optional[Sequence[int]] = None) -> torch.Tensor:
    """The network's raw output ``[num_outputs]`` for one whole volume ``[C, *spatial]`` (already on its device).

    With ``mirror_axes`` (spatial axis indices) the outputs of every mirrored copy are averaged, as nnU-Net
    averages logits in its test-time augmentation.
    """
    batch = pad_for_network(network, volume)[None]
    outputs = [network(torch.flip(batch, [axis + _FIRST_SPATIAL_DIM for axis in combo]) if combo else batch)
               for combo in mirror_combinations(mirror_axes)]
    return torch.stack(outputs).mean(0)[0].float()


@torch.no_grad()
def pooled_features_whole_case(network: torch.nn.Module, volume: torch.Tensor) -> torch.Tensor:
    """What the pooling head's linear layer reads for one whole volume ``[C, *spatial]`` (on the network's device):
    its pooled encoder features ``[features]`` (float32; mixed precision on CUDA, as in validation)."""
    batch = pad_for_network(network, volume)[None]
    with torch.autocast(volume.device.type, enabled=volume.device.type == "cuda"):
        return network.head.pooled_features(network.encoder(batch))[0].float()


def pad_for_network(network: torch.nn.Module, volume: torch.Tensor) -> torch.Tensor:
    """``volume`` padded for a network of ``n_stages`` levels (FOMO's networks say how many; 6 for the FOMO26 / nnssl
    residual encoder): to a multiple of its downsampling, and to at least two bottleneck voxels per axis, which
    instance norm needs. A network that does not say gets UNet-B's :data:`SPATIAL_MULTIPLE`."""
    n_stages = getattr(network, "n_stages", None)
    if n_stages is None:
        return pad_to_multiple(volume)
    multiple = 2 ** (n_stages - 1)
    return pad_to_multiple(volume, multiple, minimum=2 * multiple)


def iter_volumes(dataset) -> Iterator[Tuple[str, np.ndarray]]:
    """``(case id, float32 array [C, *spatial])`` for every case of an nnU-Net dataset, in its sorted order, one
    at a time."""
    for case in dataset.identifiers:
        yield case, np.asarray(dataset.load_case(case)[0][:], dtype=np.float32)


def load_volumes(dataset) -> Dict[str, np.ndarray]:
    """Every case of an nnU-Net dataset (:func:`iter_volumes`) in memory: read and decompressed once, where the
    per-epoch validation would otherwise re-read every case from disk in every epoch while the GPU waits."""
    return dict(iter_volumes(dataset))


def predict_cases(network: torch.nn.Module, volumes: Mapping[str, np.ndarray], device: torch.device,
                  mirror_axes: Optional[Sequence[int]] = None) -> Tuple[List[str], torch.Tensor]:
    """Raw network outputs ``[N, num_outputs]`` (on the CPU) for every volume (see :func:`load_volumes`), in the
    order of the returned case ids.

    The caller puts the network in eval mode; mixed precision is used on CUDA as in nnU-Net's own inference.
    """
    outputs = []
    for array in volumes.values():
        volume = torch.from_numpy(array).to(device)
        with torch.autocast(device.type, enabled=device.type == "cuda"):
            outputs.append(forward_whole_case(network, volume, mirror_axes).cpu())
    return list(volumes), torch.stack(outputs)


def prediction_records(targets: Mapping[str, float], predictions: Mapping[str, float], fold: Union[int, str],
                       prediction_name: str) -> List[dict]:
    """One record ``{case, target, <prediction_name>, fold}`` per case, sorted by case id."""
    return [{"case": case, "target": targets[case], prediction_name: float(predictions[case]), "fold": fold}
            for case in sorted(predictions)]


def write_validation_outputs(folder: PathLike, records: Sequence[Mapping], summary: Mapping) -> None:
    """Write ``predictions.csv``, ``predictions.json`` (the same records) and ``summary.json`` into ``folder``.

    Every file is written atomically; the CSV columns follow the keys of the first record.
    """
    if not records:
        raise ValueError("no validation predictions to write")
    folder = Path(folder)
    atomic_write_csv(folder / "predictions.csv", records)
    atomic_write_json(folder / "predictions.json", list(records))
    atomic_write_json(folder / "summary.json", dict(summary))


def plot_metric_history(history: Sequence[float], metric: str, path: PathLike) -> None:
    """Plot a per-epoch validation metric to ``path`` (PNG).

    nnU-Net's ``progress.png`` has fixed panels (losses, pseudo-Dice, epoch time, learning rate), so the task
    metric gets its own figure beside it.
    """
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(range(len(history)), history, marker="o")
    ax.set_xlabel("epoch")
    ax.set_ylabel(metric)
    ax.set_title(f"validation {metric} (whole cases)")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
