"""The training loop: data sources, one epoch, evaluation, checkpoints, and ``fit``.

``train.py`` and ``unet-patches train`` only parse flags and call :func:`fit`.

Reproducibility: the weights are initialised from ``training.seed``; the order of
samples in epoch ``e`` comes from a sampler seeded with ``(seed, e)``; on-the-fly
patches are drawn from ``(seed, e, index)``. So the whole run is a function of the
seed, whatever the number of DataLoader workers, and a run resumed from a checkpoint
continues exactly where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from . import runtime
from .errors import UserError
from .imageio import PALETTE, load_pairs
from .losses import build_loss
from .metrics import ConfusionMatrix
from .model import UNet, build_model

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("step", "cosine", "poly", "constant")


# --- optimiser and learning-rate schedule -----------------------------------------------------


def build_optimizer(name: str, params: Iterable[nn.Parameter], lr: float, momentum: float, weight_decay: float):
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise UserError(f"training.optimizer = {name!r}: expected one of {', '.join(OPTIMIZERS)}")


def lr_factor(schedule: str, progress: float, step_fraction: float = 0.3, gamma: float = 0.1, warmup: float = 0.0) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1] of the run.

    ``step`` is the original's schedule: x ``gamma`` after every ``step_fraction`` of the run
    (x0.1 at 30 %, 60 %, 90 %). ``cosine`` anneals to 0, ``poly`` is nnU-Net's (1 - p) ** 0.9.
    A linear warm-up over the first ``warmup`` fraction multiplies any of them.
    """
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "step":
        # The epsilon keeps 0.3 * k from landing just below a boundary in floating point.
        factor = gamma ** math.floor(progress / step_fraction + 1e-9)
    elif schedule == "cosine":
        factor = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif schedule == "poly":
        factor = (1.0 - progress) ** 0.9
    elif schedule == "constant":
        factor = 1.0
    else:
        raise UserError(f"training.schedule = {schedule!r}: expected one of {', '.join(SCHEDULES)}")
    if warmup > 0 and progress < warmup:
        factor *= (progress + 1e-3) / warmup
    return factor


@dataclass
class Progress:
    """Where a run is: steps taken, time spent, and the limits that end it.

    The schedule follows whichever limit is nearer: the epoch count or the time budget,
    so a time budget stretches (or squeezes) the schedule to fit it. ``total_steps=None``
    (no epoch limit) leaves the budget alone in charge.
    """

    total_steps: int | None
    budget_seconds: float | None = None
    step: int = 0
    elapsed: float = 0.0  # seconds spent in earlier sessions of a resumed run
    _started: float = 0.0

    _clock: float = 0.0  # seconds as agreed by all ranks at the last sync()

    def start(self) -> None:
        self._started = time.monotonic()
        self.sync()

    def seconds(self) -> float:
        return self.elapsed + time.monotonic() - self._started

    def sync(self) -> None:
        """Read the clock once for all ranks (the slowest rank's time), so that under DDP every
        rank takes the same number of steps and the same learning rates under a time budget."""
        self._clock = self.seconds()
        if self.budget_seconds is not None and torch.distributed.is_initialized():
            clock = torch.tensor([self._clock], dtype=torch.float64)
            torch.distributed.all_reduce(clock, op=torch.distributed.ReduceOp.MAX)
            self._clock = float(clock)

    def fraction(self) -> float:
        by_steps = 0.0 if self.total_steps is None else self.step / max(self.total_steps, 1)
        if self.budget_seconds is None:
            return by_steps
        return max(by_steps, self._clock / self.budget_seconds)

    def done(self) -> bool:
        return self.fraction() >= 1.0


# --- data --------------------------------------------------------------------------------------


@dataclass
class DataSources:
    """What :func:`make_datasets` found: the datasets and facts about them."""

    train: Dataset
    val: Dataset | None
    kind: str  # "patches" (a folder made by `unet-patches patches`) or "images" (sampled on the fly)
    folder: Path
    patch_size: int
    class_pixels: np.ndarray  # (K,) or (N, K) pixel counts, for median-frequency weights
    description: str


def resolve_folder(config) -> Path:
    folder = Path(config.training.folder)
    if not folder.is_absolute() and not folder.exists():
        folder = Path(config.data.root) / folder
    return folder


def make_datasets(config) -> DataSources:
    """Build the training and validation sets named by ``training.folder``.

    A folder with ``manifest.json`` holds patches on disk (validation = patches of held-back
    source images). A folder with ``images/`` and ``masks/`` holds full images: training
    patches are sampled on the fly and validation uses fixed windows of held-back images.
    """
    from .patches import PatchFolder, read_manifest, split_by_source
    from .sampling import FixedWindows, RandomPatches, class_pixel_counts

    t = config.training
    folder = resolve_folder(config)
    if (folder / "manifest.json").is_file():
        manifest = read_manifest(folder)
        if manifest["num_classes"] != config.data.num_classes or manifest["in_channels"] != config.data.in_channels:
            raise UserError(
                f"{folder}: patches have {manifest['in_channels']} channel(s) and {manifest['num_classes']} classes, "
                f"but data.in_channels = {config.data.in_channels} and data.num_classes = {config.data.num_classes}; "
                "make parameters.json match the patches"
            )
        train_names, val_names = split_by_source(manifest, t.val_fraction, t.seed)
        train = PatchFolder(folder, train_names, in_channels=config.data.in_channels)
        val = PatchFolder(folder, val_names, in_channels=config.data.in_channels) if val_names else None
        sources = {p["source"] for p in manifest["patches"]}
        n_val_sources = len({p["source"] for p in manifest["patches"] if p["name"] in set(val_names)})
        return DataSources(
            train, val, "patches", folder, int(manifest["patch_size"]),
            np.asarray(manifest["class_pixels"], dtype=np.int64),
            f"{len(train_names)} training and {len(val_names)} validation patches from {folder} "
            f"({len(sources) - n_val_sources} / {n_val_sources} source images)",
        )
    if (folder / "images").is_dir() or (folder / "masks").is_dir():
        samples = load_pairs(folder, config.data.in_channels, config.data.num_classes)
        order = np.random.default_rng([t.seed, 7]).permutation(len(samples))
        n_val = int(round(t.val_fraction * len(samples)))
        if t.val_fraction > 0 and len(samples) >= 2:
            n_val = min(max(n_val, 1), len(samples) - 1)
        val_idx, train_idx = sorted(order[:n_val]), sorted(order[n_val:])
        images = [samples[i].image for i in train_idx]
        masks = [samples[i].mask for i in train_idx]
        size = config.patches.patch_size
        train = RandomPatches(
            images, masks, size, t.samples_per_epoch, num_classes=config.data.num_classes, flips=t.flips,
            rotate90=t.rotate90, foreground_fraction=t.foreground_fraction, seed=t.seed,
        )
        val = None
        if val_idx:
            val = FixedWindows(
                [samples[i].image for i in val_idx], [samples[i].mask for i in val_idx], size,
                per_image=t.val_windows_per_image, seed=t.seed,
            )
        return DataSources(
            train, val, "images", folder, size,
            class_pixel_counts(masks, config.data.num_classes, per_image=True),
            f"{t.samples_per_epoch} random {size}x{size} patches per epoch from {len(train_idx)} images in {folder}; "
            f"validation: {len(val) if val else 0} fixed windows of {len(val_idx)} held-back images",
        )
    raise UserError(
        f"{folder}: found neither manifest.json (a patch folder) nor images/ and masks/ (full images); "
        f"make patches with `unet-patches patches SOURCE -o {folder}` or point -f at an images/+masks/ folder"
    )


def resolve_class_weights(config, sources: DataSources) -> list[float] | None:
    from .sampling import median_frequency_weights

    weights = config.training.class_weights
    if weights == "median_frequency":
        return [float(w) for w in median_frequency_weights(sources.class_pixels)]
    return weights


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, seed: int, num_workers: int) -> DataLoader:
    """A loader over this rank's shard: a seeded shuffle for training, a strided split for validation."""
    world, rank = runtime.world_size(), runtime.rank()
    if train:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        shard_size = len(dataset) // world
        return DataLoader(
            dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
            drop_last=shard_size >= batch_size, persistent_workers=False,
        )
    # Validation shards must not repeat samples, or the summed confusion matrix would be wrong.
    shard = Subset(dataset, range(rank, len(dataset), world))
    return DataLoader(shard, batch_size=batch_size, shuffle=False, num_workers=num_workers)


def set_epoch(loader: DataLoader, epoch: int) -> None:
    if isinstance(loader.sampler, DistributedSampler):
        loader.sampler.set_epoch(epoch)
    if hasattr(loader.dataset, "set_epoch"):
        loader.dataset.set_epoch(epoch)


# --- one epoch, evaluation --------------------------------------------------------------------


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    progress: Progress,
    set_lr: Callable[[float], None],
    *,
    device: torch.device,
    precision: runtime.Precision,
    scaler: torch.amp.GradScaler | None = None,
    bar=None,
) -> float:
    """Train until the loader is exhausted or ``progress`` says the run is done.

    Returns the mean training loss over this rank's steps (reduced over ranks).
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    steps = 0
    memory_format = torch.channels_last if precision.channels_last else torch.contiguous_format
    for images, masks in loader:
        progress.sync()
        if progress.done():
            break
        set_lr(progress.fraction())
        images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
        masks = masks.to(device, non_blocking=True)
        with precision.autocast(device):
            logits = model(images)
        loss = loss_fn(logits, masks)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        loss_sum += loss.detach()
        steps += 1
        progress.step += 1
        if bar is not None:
            bar.update(1)
            if steps % 10 == 0:  # reading the loss syncs the device: not every step
                bar.set_postfix(loss=f"{loss_sum.item() / steps:.4f}")
    totals = torch.stack([loss_sum, torch.tensor(float(steps), dtype=torch.float64, device=device)])
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    return float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module | None,
    num_classes: int,
    *,
    device: torch.device,
    precision: runtime.Precision,
) -> tuple[float, ConfusionMatrix, tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None]:
    """Loss and confusion matrix over the whole loader, summed over ranks.

    Returns ``(mean loss, confusion matrix, (images, predictions, masks) of the first batch)``.
    """
    model.eval()
    matrix = ConfusionMatrix(num_classes, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    pixels = 0
    first = None
    memory_format = torch.channels_last if precision.channels_last else torch.contiguous_format
    for images, masks in loader:
        images = images.to(device).contiguous(memory_format=memory_format)
        masks = masks.to(device)
        with precision.autocast(device):
            logits = model(images)
        if loss_fn is not None:
            loss_sum += loss_fn(logits, masks).double() * masks.numel()
            pixels += masks.numel()
        prediction = logits.argmax(1)
        matrix.update(prediction, masks)
        if first is None:
            first = (images[:4].float().cpu(), prediction[:4].cpu(), masks[:4].cpu())
    matrix.all_reduce()
    totals = torch.stack([loss_sum, torch.tensor(float(pixels), dtype=torch.float64, device=device)])
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(totals)
    loss = float(totals[0] / totals[1]) if totals[1] > 0 else float("nan")
    return loss, matrix, first


def image_panel(images: torch.Tensor, predictions: torch.Tensor, masks: torch.Tensor) -> np.ndarray:
    """Rows of input | prediction | truth as one (H, W, 3) uint8 picture for TensorBoard."""
    rows = []
    palette = PALETTE
    for image, prediction, mask in zip(images, predictions, masks):
        gray = image.mean(0).clamp(0, 1).numpy() if image.shape[0] != 3 else None
        picture = (np.repeat(gray[..., None], 3, axis=2) if gray is not None else image.permute(1, 2, 0).clamp(0, 1).numpy())
        picture = (picture * 255).astype(np.uint8)
        rows.append(np.concatenate([picture, palette[prediction.numpy()], palette[mask.numpy()]], axis=1))
    return np.concatenate(rows, axis=0)


# --- checkpoints --------------------------------------------------------------------------------


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Write ``state`` to ``path`` atomically: a temporary file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors land on ``device``).

    Raises:
        UserError: the file is missing, not a checkpoint, or of an unknown format version.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found; pass the path of a .pt file written by training")
    try:
        state = torch.load(path, map_location=device, weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt or foreign file
        raise UserError(f"{path}: not a readable unet-patches checkpoint ({type(exc).__name__}); pass a best.pt or last.pt") from None
    if not isinstance(state, dict) or "model_config" not in state or "model" not in state:
        raise UserError(f"{path}: not a unet-patches checkpoint (no model_config/model); pass a best.pt or last.pt")
    if state.get("format_version", 0) > CHECKPOINT_FORMAT:
        raise UserError(
            f"{path}: checkpoint format {state['format_version']} is newer than this version reads "
            f"({CHECKPOINT_FORMAT}); upgrade unet-patches"
        )
    return state


def model_from_checkpoint(state: dict[str, Any], device: torch.device | str = "cpu") -> UNet:
    model = build_model(state["model_config"])
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


# --- fit ------------------------------------------------------------------------------------------


def run_name_for(config) -> str:
    if config.training.run_name:
        return config.training.run_name
    folder = Path(config.training.folder).name or "run"
    return f"{folder}_b{config.training.batch_size}"


def fit(
    config,
    *,
    resume: str | Path | None = None,
    init_weights: str | Path | None = None,
    overwrite: bool = False,
    device: str | None = None,
    progress_bars: bool = True,
) -> dict[str, Any]:
    """Train a model as ``config`` says; return a summary (best mIoU, checkpoint paths, ...).

    ``resume`` continues a run from its checkpoint (model, optimizer, scaler, schedule position,
    epoch, RNG state, best metric) using the configuration stored in it. ``init_weights`` only
    loads model weights before a new run. Without ``overwrite`` a run folder that already holds
    checkpoints is refused.

    Works unchanged under ``torchrun``: each rank trains on its shard, metrics are summed over
    ranks, only rank 0 logs and writes files.
    """
    from .config import config_from_dict, save_config

    resumed = load_checkpoint(resume) if resume is not None else None
    if resumed is not None:
        config = config_from_dict(resumed["config"], source=f"{resume} (stored config)")
    t = config.training
    device_ = runtime.init_distributed(runtime.pick_device(device))
    main = runtime.is_main_process()
    precision = runtime.resolve_precision(t.precision, device_)

    run = run_name_for(config)
    run_dir = Path(t.checkpoint_dir) / run
    if resumed is None and (run_dir / "last.pt").exists() and not overwrite:
        raise UserError(
            f"{run_dir} already holds checkpoints: continue with --resume {run_dir / 'last.pt'}, "
            "start again with --overwrite, or choose another --run-name"
        )

    sources = make_datasets(config)
    torch.manual_seed(t.seed)
    model = build_model(config.model).to(device_)
    if init_weights is not None:
        loaded = load_checkpoint(init_weights, device_)
        try:
            model.load_state_dict(loaded["model"])
        except RuntimeError:
            raise UserError(
                f"{init_weights}: weights do not fit the model in parameters.json "
                f"(checkpoint model {loaded['model_config']} vs {config.model.to_dict()}); match the model settings"
            ) from None
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    class_weights = resolve_class_weights(config, sources)
    loss_fn = build_loss(t.loss, config.data.num_classes, class_weights=class_weights).to(device_)
    optimizer = build_optimizer(t.optimizer, model.parameters(), t.learning_rate, t.momentum, t.weight_decay)
    scaler = torch.amp.GradScaler(device_.type) if precision.scaler else None
    train_model: nn.Module = model
    if torch.distributed.is_initialized():
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device_.index] if device_.type == "cuda" else None)

    train_loader = make_loader(sources.train, t.batch_size, train=True, seed=t.seed, num_workers=t.num_workers)
    val_loader = (
        make_loader(sources.val, t.batch_size, train=False, seed=t.seed, num_workers=t.num_workers) if sources.val else None
    )
    steps_per_epoch = len(train_loader)
    if steps_per_epoch == 0:
        raise UserError(f"{sources.folder}: no training batches; add data or lower training.batch_size")
    budget = t.time_budget_minutes * 60 if t.time_budget_minutes else None
    progress = Progress(total_steps=None if t.epochs is None else steps_per_epoch * t.epochs, budget_seconds=budget)

    def set_lr(fraction: float) -> None:
        lr = t.learning_rate * lr_factor(t.schedule, fraction, t.step_fraction, t.step_gamma, t.warmup_fraction)
        for group in optimizer.param_groups:
            group["lr"] = lr

    start_epoch, best, best_epoch = 0, -1.0, None
    history: list[dict[str, Any]] = []
    if resumed is not None:
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        if scaler is not None and resumed.get("scaler"):
            scaler.load_state_dict(resumed["scaler"])
        start_epoch = resumed["epoch"]
        progress.step, progress.elapsed = resumed["step"], resumed["elapsed"]
        best, best_epoch = resumed["best_miou"], resumed["best_epoch"]
        history = list(resumed.get("history", []))
        torch.set_rng_state(resumed["torch_rng"].cpu())

    writer = None
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.json")
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(Path(t.log_dir) / run))
        log.info("data: %s", sources.description)
        log.info("model: %s, precision %s on %s, %d process(es)", config.model.to_dict(), precision.name, device_, runtime.world_size())

    class_names = config.data.names()
    progress.start()
    epoch = start_epoch
    from tqdm.auto import tqdm

    while (t.epochs is None or epoch < t.epochs) and not progress.done():
        set_epoch(train_loader, epoch)
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}" + ("" if t.epochs is None else f"/{t.epochs}"), disable=not (main and progress_bars), leave=False)
        train_loss = train_one_epoch(
            train_model, train_loader, loss_fn, optimizer, progress, set_lr,
            device=device_, precision=precision, scaler=scaler, bar=bar,
        )
        bar.close()
        epoch += 1
        record: dict[str, Any] = {"epoch": epoch, "step": progress.step, "train_loss": train_loss,
                                  "lr": optimizer.param_groups[0]["lr"], "seconds": round(progress.seconds(), 1)}
        progress.sync()
        first = None
        if torch.distributed.is_initialized():
            # BatchNorm running statistics drift apart per rank; validate rank 0's model, the one saved.
            for buffer in model.buffers():
                torch.distributed.broadcast(buffer, 0)
        if val_loader is not None:
            val_loss, matrix, first = evaluate(model, val_loader, loss_fn, config.data.num_classes, device=device_, precision=precision)
            record.update(val_loss=val_loss, **matrix.summary(class_names))
        history.append(record)
        score = record.get("miou", -train_loss)
        improved = score > best
        if improved:
            best, best_epoch = score, epoch
        if main:
            _log_epoch(writer, record, first, epoch, t.log_images_every)
            state = {
                "format_version": CHECKPOINT_FORMAT,
                "model_config": config.model.to_dict(),
                "model": unwrap(model).state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "epoch": epoch,
                "step": progress.step,
                "elapsed": progress.seconds(),
                "best_miou": best,
                "best_epoch": best_epoch,
                "torch_rng": torch.get_rng_state(),
                "config": config.to_dict(),
                "class_names": class_names,
                "in_channels": config.data.in_channels,
                "patch_size": sources.patch_size,
                "normalization": "uint8 / 255, uint16 / 65535, float as is; gray repeated / colour averaged to in_channels",
                "history": history,
                "metrics": record,
            }
            save_checkpoint(state, run_dir / "last.pt")
            if improved:
                save_checkpoint(state, run_dir / "best.pt")
            miou = record.get("miou")
            log.info(
                "epoch %d: train loss %.4f%s, lr %.2g, %.0f s%s", epoch, train_loss,
                f", val loss {record['val_loss']:.4f}, val mIoU {miou:.4f}" if miou is not None else "",
                record["lr"], record["seconds"], " (best)" if improved else "",
            )
        runtime.barrier()
    if writer is not None:
        writer.close()
    return {
        "run": run,
        "run_dir": str(run_dir),
        "best_checkpoint": str(run_dir / "best.pt"),
        "last_checkpoint": str(run_dir / "last.pt"),
        "best_val_miou": best if val_loader is not None else None,
        "best_epoch": best_epoch,
        "epochs": epoch,
        "steps": progress.step,
        "seconds": progress.seconds(),
        "precision": precision.name,
        "data": sources.description,
        "history": history,
    }


def _log_epoch(writer, record: dict[str, Any], first, epoch: int, images_every: int) -> None:
    writer.add_scalar("loss/train", record["train_loss"], epoch)
    writer.add_scalar("lr", record["lr"], epoch)
    if "miou" in record:
        writer.add_scalar("loss/val", record["val_loss"], epoch)
        writer.add_scalar("miou/val", record["miou"], epoch)
        for name, value in record["iou"].items():
            if value is not None:
                writer.add_scalar(f"iou/{name}", value, epoch)
        for name, value in record["dice"].items():
            if value is not None:
                writer.add_scalar(f"dice/{name}", value, epoch)
    if first is not None and images_every and epoch % images_every == 0:
        writer.add_image("val/input_prediction_truth", image_panel(*first), epoch, dataformats="HWC")
    writer.flush()


def write_json(path: str | Path, payload: Any) -> None:
    Path(path).write_text(json.dumps(payload, indent=2) + "\n")
