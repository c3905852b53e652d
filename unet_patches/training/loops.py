"""One epoch of training and one pass of evaluation, over this rank's loader; sums reduced over ranks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from unet_patches import runtime
from unet_patches.metrics import ConfusionMatrix

from .optim import RunClock

__all__ = ["NonFiniteGradients", "evaluate", "train_one_epoch"]


class NonFiniteGradients(Exception):
    """The loss or its gradients became NaN or infinite at ``step``; the optimizer did not step.

    Under torch.distributed every rank sees the same (all-reduced) gradients, so every rank raises it
    at the same step and none waits for the others.
    """

    def __init__(self, step: int, loss: float) -> None:
        super().__init__(f"non-finite gradients at step {step} (loss {loss:.4g})")
        self.step, self.loss = step, loss


def _memory_format(precision: runtime.Precision) -> torch.memory_format:
    return torch.channels_last if precision.channels_last else torch.contiguous_format


def train_one_epoch(
    model: nn.Module,
    loader: DataLoader,
    loss_fn: nn.Module,
    optimizer: torch.optim.Optimizer,
    clock: RunClock,
    set_lr: Callable[[float], None],
    *,
    device: torch.device,
    precision: runtime.Precision,
    scaler: torch.amp.GradScaler | None = None,
    bar: Any = None,
    after_step: Callable[[], None] | None = None,
    augment: Callable[..., tuple[torch.Tensor, ...]] | None = None,
    grad_clip: float | None = None,
) -> float:
    """Train until the loader is exhausted or ``clock`` says the run is done; ``after_step`` is
    called after each optimizer step; ``augment`` (e.g. :class:`~unet_patches.training.augment.BatchAugmenter`)
    changes each batch on the device before the forward pass. Batches of three (images, masks, pixel
    weights) hand the weights to ``augment`` and ``loss_fn`` too. ``grad_clip``: scale the gradients
    down to this total L2 norm when above it.

    Returns the mean training loss over this rank's steps (reduced over ranks).

    Raises:
        NonFiniteGradients: the gradients' norm is NaN or infinite (a diverging learning rate,
            fp16/bf16 overflow), before the optimizer steps on them. With a gradient scaler (fp16
            on CUDA) infinite gradients are the scaler's to skip, as usual.
    """
    model.train()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    steps = 0
    for batch in loader:
        clock.sync()
        if clock.done():
            break
        set_lr(clock.fraction())
        images, masks, *weights = (part.to(device, non_blocking=True) for part in batch)
        if augment is not None:
            images, masks, *weights = augment(images, masks, *weights)
        images = images.contiguous(memory_format=_memory_format(precision))
        with precision.autocast(device):
            logits = model(images)
        loss = loss_fn(logits, masks, *weights)
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            if grad_clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            _check_gradients(model, grad_clip, clock.step, loss)
            optimizer.step()
        loss_sum += loss.detach()
        steps += 1
        clock.step += 1
        if after_step is not None:
            after_step()
        if bar is not None:
            bar.update(1)
            if steps % 10 == 0:  # reading the loss syncs the device: not every step
                bar.set_postfix(loss=f"{loss_sum.item() / steps:.4f}")
    return _mean_over_ranks(loss_sum, steps, device)


def _check_gradients(model: nn.Module, grad_clip: float | None, step: int, loss: torch.Tensor) -> None:
    """Clip to ``grad_clip``, and raise :class:`NonFiniteGradients` if the norm is not finite (one
    pass over the gradients and one device sync per step)."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    if not grads:
        return
    norm = torch.nn.utils.get_total_norm(grads)
    if not torch.isfinite(norm):
        raise NonFiniteGradients(step, float(loss.detach()))
    if grad_clip is not None:
        torch.nn.utils.clip_grads_with_norm_(grads, grad_clip, norm)


def _mean_over_ranks(total: torch.Tensor, count: int, device: torch.device) -> float:
    totals = torch.stack([total, torch.tensor(float(count), dtype=torch.float64, device=device)])
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
    """Loss (with the batches' pixel weights, if any) and confusion matrix over the whole loader,
    summed over ranks.

    Returns ``(mean loss per pixel, confusion matrix, (images, predictions, masks) of the first batch)``.
    """
    model.eval()
    matrix = ConfusionMatrix(num_classes, device=device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    pixels = 0
    first = None
    for images, masks, *weights in loader:
        images = images.to(device).contiguous(memory_format=_memory_format(precision))
        masks, weights = masks.to(device), [part.to(device) for part in weights]
        with precision.autocast(device):
            logits = model(images)
        if loss_fn is not None:
            loss_sum += loss_fn(logits, masks, *weights).double() * masks.numel()
            pixels += masks.numel()
        prediction = logits.argmax(1)
        matrix.update(prediction, masks)
        if first is None:
            first = (images[:4].float().cpu(), prediction[:4].cpu(), masks[:4].cpu())
    matrix.all_reduce()
    return _mean_over_ranks(loss_sum, pixels, device), matrix, first
