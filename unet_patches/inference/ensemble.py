"""Several trained networks as one: their softmax probabilities averaged in a single forward pass.

Snapshot ensembles (``snapshot_NN.pt`` from a ``cosine_restarts`` run) and hand-picked checkpoints
both become a :class:`ProbabilityEnsemble`, which the tiled engine treats like any network: each
window goes through every member in the same pass, and the image is read once.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from unet_patches.errors import UserError

__all__ = ["ProbabilityEnsemble", "checkpoint_paths"]


class ProbabilityEnsemble(nn.Module):
    """``forward`` returns ``log(mean_k softmax(member_k(x) / T_k))``: logits whose softmax is exactly
    the members' mean probability, so blending and argmax downstream need no special case.

    ``temperatures`` (default all 1) are the members' own calibrations (:mod:`unet_patches.metrics.calibration`):
    each member's probabilities are calibrated before they are averaged, so the ensemble's labels are
    those of its calibrated members (they may differ from an average of uncalibrated ones)."""

    def __init__(self, members: list[nn.Module], temperatures: list[float] | None = None) -> None:
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        self.temperatures = [float(t) for t in (temperatures or [1.0] * len(members))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        calibrated = [
            member(x).float() / t if t != 1.0 else member(x).float()
            for member, t in zip(self.members, self.temperatures)
        ]
        probs = torch.stack([logits.softmax(dim=1) for logits in calibrated]).mean(dim=0)
        return probs.clamp_min(torch.finfo(torch.float32).tiny).log()


def checkpoint_paths(spec: str | Path) -> list[Path]:
    """The checkpoint files ``spec`` names: one file, several joined by commas, a run folder (its
    ``snapshot_NN.pt`` files, in order), or a cross-validation folder (each fold's ``best.pt``).

    Raises:
        UserError: a folder without snapshots, or an empty name.
    """
    path = Path(spec)
    if path.is_dir() and (path / "splits.json").is_file():  # a cross-validation: its fold models
        k = int(json.loads((path / "splits.json").read_text()).get("k", 0))
        folds = [path / f"fold_{i}" / "best.pt" for i in range(k)]
        missing = [str(p.parent.name) for p in folds if not p.is_file()]
        if not folds or missing:
            raise UserError(
                f"{path}: cross-validation folder without the best.pt of {', '.join(missing) or 'any fold'}; "
                "finish it with unet-patches crossval, or pass one fold's best.pt"
            )
        return folds
    if path.is_dir():
        snapshots = sorted(path.glob("snapshot_*.pt"))
        if not snapshots:
            raise UserError(
                f"{path}: folder holds no snapshot_NN.pt files; train with --schedule cosine_restarts to get them, "
                "or pass checkpoint files (several joined by commas)"
            )
        return snapshots
    parts = [part.strip() for part in str(spec).split(",")] if not path.exists() else [str(spec)]
    if not all(parts):
        raise UserError(f"{spec!r}: an empty checkpoint name; pass FILE.pt, FILE.pt,FILE.pt or a run folder")
    return [Path(part) for part in parts]
