"""The transfer report: what happened to every pretrained tensor and every network parameter."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from nnunet_ext.utils.files import PathLike, atomic_write_json

#: Copied bit-exact from the checkpoint.
LOADED = "loaded"
#: Copied after channel adaptation (the stem conv for inputs with C != 1 channels).
ADAPTED = "adapted"
#: Both sides exist but the shapes differ and cannot be adapted; the parameter keeps its fresh initialisation.
SHAPE_MISMATCH = "shape-mismatch"
#: The network expects this pretrained tensor but the checkpoint lacks it.
MISSING = "missing"
#: The checkpoint holds a tensor the key table does not know.
UNEXPECTED = "unexpected"
#: A known pretrained tensor the network deliberately does not use (e.g. the decoder for classification).
UNUSED = "unused"
#: A parameter that is initialised fresh on purpose (output conv, deep-supervision heads, image-level head).
REINITIALISED = "reinitialised"
STATUSES = (LOADED, ADAPTED, SHAPE_MISMATCH, MISSING, UNEXPECTED, UNUSED, REINITIALISED)
#: Statuses that make a transfer incomplete; refused unless partial transfers are allowed.
FAILURE_STATUSES = (SHAPE_MISMATCH, MISSING, UNEXPECTED)
#: Statuses of tensors the network expects to take from the checkpoint.
TRANSFERABLE_STATUSES = (LOADED, ADAPTED, SHAPE_MISMATCH, MISSING)
#: How many failing keys a summary line names before it abbreviates.
SUMMARY_MAX_KEYS = 5


@dataclass
class TransferEntry:
    """One checkpoint tensor (``source``) and/or network parameter (``target``) and what happened to it."""

    status: str
    source: str | None
    target: str | None
    source_shape: list[int] | None = None
    target_shape: list[int] | None = None
    note: str = ""


@dataclass
class TransferReport:
    """Per-key outcome of a transfer, with counts; ``save`` writes it as JSON next to the model."""

    entries: list[TransferEntry]
    channel_adaptation: str
    network: dict[str, Any]
    checkpoint: str | None = None
    sha256: str | None = None
    allow_partial: bool = False
    layout: dict[str, Any] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        """Number of entries per status (every status listed, zeros included)."""
        tally = Counter(entry.status for entry in self.entries)
        return {status: tally[status] for status in STATUSES}

    def keys_with(self, *statuses: str) -> list[str]:
        """Source key (or target name when there is no source) of every entry with one of ``statuses``."""
        return [entry.source or entry.target for entry in self.entries if entry.status in statuses]

    @property
    def transferable(self) -> int:
        """Tensors the network expects from the checkpoint."""
        return sum(1 for entry in self.entries if entry.status in TRANSFERABLE_STATUSES)

    @property
    def transferred(self) -> int:
        """Tensors actually taken from the checkpoint (loaded or adapted)."""
        return sum(1 for entry in self.entries if entry.status in (LOADED, ADAPTED))

    @property
    def complete(self) -> bool:
        """True when every transferable tensor was transferred and nothing unknown was found."""
        return not self.keys_with(*FAILURE_STATUSES)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: provenance, counts and every entry."""
        return {
            "checkpoint": self.checkpoint,
            "sha256": self.sha256,
            "network": self.network,
            "layout": self.layout,
            "channel_adaptation": self.channel_adaptation,
            "allow_partial": self.allow_partial,
            "complete": self.complete,
            "transferable": self.transferable,
            "transferred": self.transferred,
            "counts": self.counts(),
            "entries": [asdict(entry) for entry in self.entries],
        }

    def summary(self) -> str:
        """A few readable lines: source, how much was transferred, and any failing keys."""
        counts = self.counts()
        lines = [
            f"pretrained weights: {self.checkpoint or '(in-memory state dict)'}"
            + (f" (sha256 {self.sha256[:12]})" if self.sha256 else ""),
            f"transferred {self.transferred}/{self.transferable} transferable tensors"
            f" (channel adaptation: {self.channel_adaptation})",
            ", ".join(f"{status} {count}" for status, count in counts.items() if count),
        ]
        for status in FAILURE_STATUSES:
            keys = self.keys_with(status)
            if keys:
                shown = ", ".join(keys[:SUMMARY_MAX_KEYS])
                more = f" and {len(keys) - SUMMARY_MAX_KEYS} more" if len(keys) > SUMMARY_MAX_KEYS else ""
                lines.append(f"{status}: {shown}{more}")
        return "\n".join(lines)

    def save(self, path: PathLike) -> Path:
        """Write :meth:`to_dict` atomically to ``path``; returns the path."""
        path = Path(path)
        atomic_write_json(path, self.to_dict())
        return path
