"""The one training loop behind `finetune`, `distill` and every recovery fine-tune.

A stage supplies the loss: `loss_fn(model, x, y) -> (loss, logits)`; the loop does the rest:
AdamW with warmup + cosine, augmentation on whole uint8 batches on the training device (a
few tensor ops, no loader workers), a progress bar, a held-out score and a resumable
checkpoint after every epoch and every few minutes within one (the build's `--checkpoint-every`).

Several processes: run `torchrun --nproc-per-node N -m vitdeploy.cli build RECIPE`. The
loop then wraps the model in PyTorch's DistributedDataParallel (gloo on CPU, NCCL on GPU).
Every process walks the same global batch order and draws the same augmentation parameters
for the whole global batch, then trains on its own contiguous slice; DDP averages the
gradients, so N processes compute the step one process would (up to float rounding).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torchvision.transforms import v2

from vitdeploy.core.progress import console, progress_bar
from vitdeploy.core.storage import atomic_path
from vitdeploy.recipe.schema import Preprocess, TrainingConfig
from vitdeploy.torch.evaluate import torch_accuracy
from vitdeploy.torch.stages.base import StageContext

# (model, images, labels, indices of the images in the training set) -> (loss, logits for accuracy)
LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

# ---------------------------------------------------------------- batched augmentation


def random_crop_flip(
    x: torch.Tensor, padding: int, gen: torch.Generator, rows: slice | None = None, total: int | None = None
) -> torch.Tensor:
    """Per-sample random crop from a reflect-padded batch, then random horizontal flip.

    `rows`: `x` is this slice of a global batch of `total` images; the random draws cover the
    global batch, so every process of a distributed run sees the augmentation one process would.
    """
    b, _, h, w = x.shape
    rows = rows or slice(0, b)
    total = total or b
    oy = torch.randint(0, 2 * padding + 1, (total,), generator=gen)[rows].to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (total,), generator=gen)[rows].to(x.device)
    flip = (torch.rand(total, generator=gen) < 0.5)[rows].to(x.device)[:, None, None, None]
    padded = F.pad(x.float(), (padding,) * 4, mode="reflect").to(x.dtype)
    iy = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    ix = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]
    cropped = padded[torch.arange(b, device=x.device)[:, None, None], :, iy, ix].permute(0, 3, 1, 2)
    return torch.where(flip, cropped.flip(-1), cropped)


def random_resized_crop_flip(
    x: torch.Tensor, size: int, gen: torch.Generator, rows: slice | None = None, total: int | None = None
) -> torch.Tensor:
    """Per-sample random-resized crop (8-100 % of the area, aspect 3/4-4/3, resized to `size`)
    and random horizontal flip: timm's and torchvision's training crop, drawn from `gen` over the
    global batch like `random_crop_flip`."""
    b, _, h, w = x.shape
    rows, total = rows or slice(0, b), total or b
    area = (0.08 + 0.92 * torch.rand(total, generator=gen))[rows] * h * w
    log_ratio = math.log(3 / 4) + (math.log(4 / 3) - math.log(3 / 4)) * torch.rand(total, generator=gen)[rows]
    ratio = torch.exp(log_ratio)
    cw = (area * ratio).sqrt().round().clamp(1, w).long()
    ch = (area / ratio).sqrt().round().clamp(1, h).long()
    fy, fx = torch.rand(total, generator=gen)[rows], torch.rand(total, generator=gen)[rows]
    flip = (torch.rand(total, generator=gen) < 0.5)[rows]
    out = []
    for i in range(b):
        top, left = int(fy[i] * (h - ch[i] + 1)), int(fx[i] * (w - cw[i] + 1))
        crop = x[i : i + 1, :, top : top + ch[i], left : left + cw[i]].float()
        crop = F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(crop.flip(-1) if flip[i] else crop)
    return torch.cat(out).round().clamp(0, 255).to(x.dtype)


def center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    top, left = (x.shape[-2] - size) // 2, (x.shape[-1] - size) // 2
    return x[..., top : top + size, left : left + size]


class Normalize:
    """uint8 NCHW batch -> float batch scaled to [0, 1] and normalized with the recipe's mean/std."""

    def __init__(self, pre: Preprocess, device: torch.device) -> None:
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x.float() / 255.0 - self.mean) / self.std


class BatchAugment:
    """uint8 NCHW batch on device -> augmented, normalized float batch at the model's size.

    Images decoded larger than the model (room for the evaluation crop, `crop_pct`) are cut
    to it: by the random-resized crop, by a random crop (`flip_crop`), or centrally (`none`).
    """

    def __init__(self, cfg: TrainingConfig, pre: Preprocess, device: torch.device, size: int | None = None) -> None:
        self.kind, self.size = cfg.augment, size
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.randaugment = v2.RandAugment(cfg.randaugment_ops, cfg.randaugment_magnitude)
        self.normalize = Normalize(pre, device)

    def __call__(self, x: torch.Tensor, rows: slice | None = None, total: int | None = None) -> torch.Tensor:
        size = self.size or x.shape[-1]
        if self.kind == "random_resized_crop":
            return self.normalize(random_resized_crop_flip(x, size, self.gen, rows, total))
        if self.kind == "randaugment":
            # RandAugment draws one op set per call; chunks of 16 give a batch varied ops.
            x = torch.cat([self.randaugment(chunk) for chunk in x.split(16)])
        if self.kind in ("flip_crop", "randaugment"):
            x = random_crop_flip(x, padding=x.shape[-1] // 8, gen=self.gen, rows=rows, total=total)
        return self.normalize(center_crop(x, size) if x.shape[-1] != size else x)


def warmup_cosine(step: int, total: int, warmup: int, floor: float) -> float:
    """LR multiplier: linear warmup, then cosine decay to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class WarmupCosine:
    """`warmup_cosine` as an object: LambdaLR saves its attributes with the scheduler's state,
    so a schedule shrunk to a time budget (`shrink`) is restored with a resumed run."""

    def __init__(self, total: int, warmup: int, floor: float) -> None:
        self.total, self.warmup, self.floor = total, warmup, floor

    def __call__(self, step: int) -> float:
        return warmup_cosine(step, self.total, self.warmup, self.floor)

    def shrink(self, fraction: float) -> None:
        """The same schedule over `fraction` of its steps, warmup included."""
        self.total, self.warmup = max(1, round(self.total * fraction)), round(self.warmup * fraction)


def epochs_within(budget_s: float, first_epoch_s: float, epochs: int) -> int:
    """How many epochs fit in `budget_s` at the first epoch's pace: at least the one that ran."""
    return max(1, min(epochs, math.floor(budget_s / max(first_epoch_s, 1e-9))))


# ---------------------------------------------------------------- processes


def process_group(device: torch.device) -> tuple[int, int, torch.device]:
    """(rank, world size, this process's device); joins torchrun's group when launched by it."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            local = int(os.environ.get("LOCAL_RANK", "0"))
            torch.cuda.set_device(local)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if not dist.is_initialized():
        return 0, 1, device
    if device.type == "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    return dist.get_rank(), dist.get_world_size(), device


def cross_entropy(label_smoothing: float) -> LossFn:
    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = model(x)
        return F.cross_entropy(logits, y, label_smoothing=label_smoothing), logits

    return loss_fn


# ---------------------------------------------------------------- the loop


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """No weight decay on norms, biases, tokens and position embeddings."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        exempt = p.ndim <= 1 or name.endswith(("pos_embed", "cls_token", "dist_token"))
        (no_decay if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


@dataclass
class TrainingProgress:
    """Where training stands; saved with the weights so a killed build resumes mid-epoch.

    `order` is the current epoch's batch order and `step` the next batch in it; the sums
    are the epoch's running loss and accuracy. With the optimizer, scheduler and both
    random generators restored, a resumed run takes exactly the steps an uninterrupted one
    would.
    """

    epoch: int = 0
    step: int = 0
    planned_epochs: int | None = None  # set after the first epoch when a time budget applies
    order: torch.Tensor | None = None
    loss_sum: float = 0.0
    correct: int = 0
    seen: int = 0
    epoch_seconds: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def info(self, world: int) -> str:
        rate = self.seen * world / max(1e-9, self.epoch_seconds)
        return f"loss {self.loss_sum / self.seen:.3f}  acc {self.correct / self.seen:.1%}  {rate:.0f} img/s"


class Checkpointer:
    """Writes the training state atomically at epoch ends and at most every `every_s` seconds between."""

    def __init__(self, ctx: StageContext, cfg: TrainingConfig, rank: int) -> None:
        self.path = ctx.work_dir / "last.pt"
        self.config = cfg.model_dump_json()
        self.every_s = ctx.checkpoint_every_s
        self.rank = rank
        self.last = time.perf_counter()

    def restore(self, model, optimizer, scheduler, augment: BatchAugment) -> TrainingProgress | None:
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception:  # a checkpoint from an older layout, or unreadable: start over
            return None
        if state.get("config") != self.config or "progress" not in state:
            return None
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        augment.gen.set_state(state["augment_rng"])
        torch.set_rng_state(state["torch_rng"])
        p = json.loads(state["progress"])
        return TrainingProgress(order=state.get("order"), history=p.pop("history"), **p)

    def due(self) -> bool:
        return time.perf_counter() - self.last >= self.every_s

    def save(self, model, optimizer, scheduler, augment: BatchAugment, progress: TrainingProgress) -> None:
        self.last = time.perf_counter()
        if self.rank != 0:
            return
        fields = {k: v for k, v in vars(progress).items() if k != "order"}
        state = {
            "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "augment_rng": augment.gen.get_state(), "torch_rng": torch.get_rng_state(), "config": self.config,
            "progress": json.dumps(fields), **({"order": progress.order} if progress.order is not None else {}),
        }  # fmt: skip
        _save_checkpoint(self.path, state, progress.history)


@dataclass
class Run:
    """Everything one training run holds: model, optimisation state, data, processes."""

    model: nn.Module
    runner: nn.Module  # the model, or its DistributedDataParallel wrapper
    loss_fn: LossFn
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    augment: BatchAugment
    checkpoints: Checkpointer
    images: torch.Tensor  # uint8 NCHW, the whole training set
    labels: torch.Tensor
    device: torch.device
    rank: int
    world: int
    cfg: TrainingConfig
    amp_dtype: torch.dtype | None  # None: no autocast

    def save(self, progress: TrainingProgress) -> None:
        self.checkpoints.save(self.model, self.optimizer, self.scheduler, self.augment, progress)

    def epoch(self, progress: TrainingProgress, bar, task) -> None:
        """Train the rest of the current epoch from `progress.step`, checkpointing when due."""
        cfg, count = self.cfg, len(self.labels)
        self.model.train()
        if progress.order is None:
            progress.order = torch.randperm(count, generator=self.augment.gen)
        order = progress.order.to(self.images.device)
        t0 = time.perf_counter() - progress.epoch_seconds
        # Sums stay on the device between checkpoints: reading them every step would stall a GPU.
        loss_sum = torch.tensor(progress.loss_sum, device=self.device, dtype=torch.float64)
        correct = torch.tensor(progress.correct, device=self.device)

        def sync() -> None:
            progress.loss_sum, progress.correct = float(loss_sum), int(correct)
            progress.epoch_seconds = time.perf_counter() - t0

        starts = range(progress.step * cfg.batch_size, count, cfg.batch_size)
        for step, start in enumerate(starts, start=progress.step):
            batch = order[start : start + cfg.batch_size]
            parts = batch.tensor_split(self.world)
            part, lo = parts[self.rank], sum(len(p) for p in parts[: self.rank])
            x = self.augment(
                self.images[part].to(self.device, non_blocking=True), rows=slice(lo, lo + len(part)), total=len(batch)
            )
            y = self.labels[part].to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                loss, logits = self.loss_fn(self.runner, x, y, part)
            optimize(self.model, loss, self.optimizer, self.scheduler, self.scaler, cfg.grad_clip)
            loss_sum += loss.detach() * len(y)
            correct += (logits.detach().argmax(1) == y).sum()
            progress.seen, progress.step = progress.seen + len(y), step + 1
            if step % 20 == 0:
                sync()
                bar.update(task, completed=min(count, progress.seen * self.world), info=progress.info(self.world))
            if self.checkpoints.due() and progress.step < math.ceil(count / cfg.batch_size):  # not at the epoch end
                sync()
                self.save(progress)
        sync()
        bar.update(task, completed=count)


def start_run(model: nn.Module, ctx: StageContext, cfg: TrainingConfig, loss_fn: LossFn, train_set) -> Run:
    rank, world, device = process_group(ctx.device)
    model.to(device)
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.weight_decay), lr=cfg.lr)
    steps_per_epoch = math.ceil(len(train_set) / cfg.batch_size)
    total, warmup = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    floor = cfg.min_lr / cfg.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, WarmupCosine(total, warmup, floor))
    use_amp = cfg.amp and device.type == "cuda"
    amp_dtype = (torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16) if use_amp else None
    images = torch.from_numpy(np.ascontiguousarray(train_set.images.transpose(0, 3, 1, 2)))  # uint8 NCHW, in memory
    labels = torch.from_numpy(train_set.labels)
    if device.type == "cuda":  # the whole uint8 set fits on a GPU; no loader needed
        images, labels = images.to(device), labels.to(device)
    runner = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    return Run(
        model, runner, loss_fn, optimizer, scheduler, torch.amp.GradScaler(enabled=amp_dtype == torch.float16),
        BatchAugment(cfg, ctx.recipe.data.preprocess, device, model.patch_embed.img_size[0]), Checkpointer(ctx, cfg, rank),
        images, labels, device,
        rank, world, cfg, amp_dtype,
    )  # fmt: skip


def train(model: nn.Module, ctx: StageContext, cfg: TrainingConfig, loss_fn: LossFn, name: str) -> dict[str, Any]:
    """Train `model` in place with `loss_fn`; returns the stage report (per-epoch history).

    `loss_fn` is called with the training set's images as uint8 indices too, so a loss may
    look up per-image data it computed once (see `distill`).
    """
    if cfg.num_threads and ctx.device.type == "cpu":
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    train_set = ctx.split(ctx.recipe.data.train_split).subset(cfg.train_samples, seed=cfg.seed)
    held_out = ctx.split(ctx.recipe.data.eval_split).subset(cfg.eval_samples, seed=cfg.seed + 1)
    run = start_run(model, ctx, cfg, loss_fn, train_set)
    progress = run.checkpoints.restore(model, run.optimizer, run.scheduler, run.augment)
    if progress is not None and run.rank == 0:
        console.print(f"[cyan]resuming {name} at epoch {progress.epoch + 1}, step {progress.step} ({run.checkpoints.path})")
    progress = progress or TrainingProgress()
    started = time.perf_counter()
    with progress_bar() as bar:
        while progress.epoch < (progress.planned_epochs or cfg.epochs):
            epoch, planned = progress.epoch, progress.planned_epochs or cfg.epochs
            run.epoch(progress, bar, bar.add_task(f"{name} epoch {epoch + 1}/{planned}", total=len(train_set)))
            record = finish_epoch(model, held_out, ctx.recipe.data.preprocess, run.device, run.scheduler, progress)
            if run.rank == 0:
                console.print(
                    f"{name} epoch {epoch + 1}: loss {record['train_loss']:.3f}, train {record['train_acc']:.1%}, "
                    f"held-out {record['eval_acc']:.2%} on {len(held_out)} images, {record['seconds']:.0f} s"
                )
            if cfg.max_minutes and progress.planned_epochs is None:
                plan_to_budget(run, progress, record, name)
            run.save(progress)
    model.eval()
    return {
        "epochs": progress.history,
        "epochs_run": len(progress.history),
        **({"max_minutes": cfg.max_minutes} if cfg.max_minutes else {}),
        "train_images": len(train_set),
        "held_out_images": len(held_out),
        "held_out_split": ctx.recipe.data.eval_split,  # whichever build trained it: the stage is shared
        "device": str(run.device),
        "processes": run.world,
        "seconds": round(time.perf_counter() - started, 2),
        "seconds_all_epochs": round(sum(r["seconds"] for r in progress.history), 2),
    }


def plan_to_budget(run: Run, progress: TrainingProgress, first: dict[str, Any], name: str) -> None:
    """After the first epoch: as many epochs as fit in `max_minutes` at its pace, the schedule
    shrunk to match, so the run ends where its learning rate does."""
    cfg = run.cfg
    epochs = epochs_within(cfg.max_minutes * 60, first["seconds"] + first["eval_seconds"], cfg.epochs)
    if run.world > 1:  # every process must stop after the same epoch: rank 0's clock decides
        decided = torch.tensor([epochs], device=run.device)
        dist.broadcast(decided, src=0)
        epochs = int(decided.item())
    progress.planned_epochs = epochs
    if epochs < cfg.epochs:
        run.scheduler.lr_lambdas[0].shrink(epochs / cfg.epochs)  # one schedule object serves every param group
        if run.rank == 0:
            console.print(f"[cyan]{name}: {epochs} of {cfg.epochs} epochs fit in max_minutes {cfg.max_minutes:g}")


def optimize(model: nn.Module, loss: torch.Tensor, optimizer, scheduler, scaler, grad_clip: float | None) -> None:
    """One optimizer step on `loss`: backward (scaled for fp16), optional clipping, LR schedule."""
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    scheduler.step()


def finish_epoch(model, held_out, pre, device, scheduler, progress: TrainingProgress) -> dict[str, Any]:
    """Score the epoch, append it to the history and move `progress` to the next epoch."""
    t0 = time.perf_counter()
    eval_acc = torch_accuracy(model, held_out, pre, device, batch_size=256, label=None)
    record = {
        "epoch": progress.epoch + 1,
        "train_loss": progress.loss_sum / progress.seen,
        "train_acc": progress.correct / progress.seen,
        "eval_acc": eval_acc,
        "lr": scheduler.get_last_lr()[0],
        "seconds": round(progress.epoch_seconds, 2),
        "eval_seconds": round(time.perf_counter() - t0, 2),
    }
    progress.history.append(record)
    progress.epoch, progress.step, progress.order = progress.epoch + 1, 0, None
    progress.loss_sum, progress.correct, progress.seen, progress.epoch_seconds = 0.0, 0, 0, 0.0
    return record


def _save_checkpoint(path, state: dict[str, Any], history: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(state, tmp)
    with atomic_path(path.with_name("history.json")) as tmp:
        tmp.write_text(json.dumps(history, indent=2))
