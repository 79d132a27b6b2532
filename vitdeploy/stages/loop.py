"""The `finetune` stage: cross-entropy training with AdamW, warmup + cosine, on CPU or CUDA.

Augmentation runs on whole uint8 batches on the training device, so on a GPU the data
pipeline is a few tensor ops rather than a pool of PIL workers. A checkpoint is written
after every epoch; a rerun of the same recipe resumes from it.
"""

from __future__ import annotations

import json
import math
import time

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.transforms import v2

from vitdeploy.evaluate import torch_accuracy
from vitdeploy.progress import console, progress_bar
from vitdeploy.recipe import FinetuneConfig, Preprocess
from vitdeploy.stages import StageContext, register_stage
from vitdeploy.storage import atomic_path

# ---------------------------------------------------------------- batched augmentation


def random_crop_flip(x: torch.Tensor, padding: int, gen: torch.Generator) -> torch.Tensor:
    """Per-sample random crop from a reflect-padded batch, then random horizontal flip."""
    b, _, h, w = x.shape
    padded = F.pad(x.float(), (padding,) * 4, mode="reflect").to(x.dtype)
    oy = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device="cpu").to(x.device)
    ox = torch.randint(0, 2 * padding + 1, (b,), generator=gen, device="cpu").to(x.device)
    iy = (oy[:, None] + torch.arange(h, device=x.device))[:, :, None]
    ix = (ox[:, None] + torch.arange(w, device=x.device))[:, None, :]
    cropped = padded[torch.arange(b, device=x.device)[:, None, None], :, iy, ix].permute(0, 3, 1, 2)
    flip = (torch.rand(b, generator=gen) < 0.5).to(x.device)[:, None, None, None]
    return torch.where(flip, cropped.flip(-1), cropped)


class BatchAugment:
    """uint8 NCHW batch on device -> augmented, normalized float batch."""

    def __init__(self, cfg: FinetuneConfig, pre: Preprocess, device: torch.device) -> None:
        self.kind = cfg.augment
        self.gen = torch.Generator().manual_seed(cfg.seed)
        self.randaugment = v2.RandAugment(cfg.randaugment_ops, cfg.randaugment_magnitude)
        self.mean = torch.tensor(pre.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(pre.std, device=device).view(1, 3, 1, 1)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "randaugment":
            # RandAugment draws one op set per call; chunks of 16 give a batch varied ops.
            x = torch.cat([self.randaugment(chunk) for chunk in x.split(16)])
        if self.kind in ("flip_crop", "randaugment"):
            x = random_crop_flip(x, padding=x.shape[-1] // 8, gen=self.gen)
        return (x.float() / 255.0 - self.mean) / self.std


def warmup_cosine(step: int, total: int, warmup: int, floor: float) -> float:
    """LR multiplier: linear warmup, then cosine decay to `floor`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


# ---------------------------------------------------------------- the stage


@register_stage(FinetuneConfig)
def finetune(model: nn.Module, ctx: StageContext, cfg: FinetuneConfig) -> nn.Module:
    if cfg.num_threads and ctx.device.type == "cpu":
        torch.set_num_threads(cfg.num_threads)
    torch.manual_seed(cfg.seed)
    pre = ctx.recipe.data.preprocess
    train = ctx.split(ctx.recipe.data.train_split).subset(cfg.train_samples, seed=cfg.seed)
    held_out = ctx.split(ctx.recipe.data.eval_split).subset(cfg.eval_samples, seed=cfg.seed + 1)

    model.to(ctx.device)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1 and "pos_embed" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1 or "pos_embed" in n]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=cfg.lr,
    )
    steps_per_epoch = math.ceil(len(train) / cfg.batch_size)
    total, warmup = cfg.epochs * steps_per_epoch, round(cfg.warmup_epochs * steps_per_epoch)
    floor = cfg.min_lr / cfg.lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, total, warmup, floor))

    ckpt_path = ctx.work_dir / "last.pt"
    config_json = cfg.model_dump_json()
    start_epoch, history = 0, []
    if ckpt_path.is_file():
        state = torch.load(ckpt_path, map_location=ctx.device, weights_only=True)
        if state.get("config") == config_json:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            start_epoch, history = state["epoch"], json.loads(state["history"])
            console.print(f"[cyan]resuming finetune from epoch {start_epoch} ({ckpt_path})")

    augment = BatchAugment(cfg, pre, ctx.device)
    use_amp = cfg.amp and ctx.device.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(enabled=use_amp and amp_dtype == torch.float16)
    images = torch.from_numpy(train.images).permute(0, 3, 1, 2).contiguous()  # uint8 NCHW
    labels = torch.from_numpy(train.labels)
    if ctx.device.type == "cuda":  # the whole uint8 set fits on a GPU; no loader needed
        images, labels = images.to(ctx.device), labels.to(ctx.device)

    with progress_bar() as bar:
        for epoch in range(start_epoch, cfg.epochs):
            model.train()
            task = bar.add_task(f"finetune epoch {epoch + 1}/{cfg.epochs}", total=len(train))
            order = torch.randperm(len(train), generator=augment.gen).to(images.device)
            seen, loss_sum, correct, t0 = 0, 0.0, 0, time.perf_counter()
            for start in range(0, len(train), cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                x = augment(images[idx].to(ctx.device, non_blocking=True))
                y = labels[idx].to(ctx.device, non_blocking=True)
                with torch.autocast(ctx.device.type, dtype=amp_dtype, enabled=use_amp):
                    logits = model(x)
                    loss = F.cross_entropy(logits, y, label_smoothing=cfg.label_smoothing)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                scheduler.step()
                seen += len(y)
                loss_sum += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                rate = seen / (time.perf_counter() - t0)
                bar.update(task, advance=len(y), info=f"loss {loss_sum / seen:.3f}  acc {correct / seen:.1%}  {rate:.0f} img/s")
            acc = torch_accuracy(model, held_out, pre, ctx.device, batch_size=256)
            record = {
                "epoch": epoch + 1,
                "train_loss": loss_sum / seen,
                "train_acc": correct / seen,
                "eval_acc": acc,
                "lr": scheduler.get_last_lr()[0],
                "seconds": time.perf_counter() - t0,
            }
            history.append(record)
            console.print(
                f"epoch {epoch + 1}: loss {record['train_loss']:.3f}, train {record['train_acc']:.1%}, "
                f"held-out {acc:.2%} on {len(held_out)} images, {record['seconds']:.0f} s"
            )
            _save_checkpoint(ckpt_path, model, optimizer, scheduler, epoch + 1, history, config_json)
    model.eval()
    ctx.report["finetune"] = {"epochs": history, "train_images": len(train), "held_out_images": len(held_out)}
    return model


def _save_checkpoint(path, model, optimizer, scheduler, epoch, history, config_json) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save(
            {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "epoch": epoch,
                "history": json.dumps(history),
                "config": config_json,
            },
            tmp,
        )
    with atomic_path(path.with_name("history.json")) as tmp:
        tmp.write_text(json.dumps(history, indent=2))
