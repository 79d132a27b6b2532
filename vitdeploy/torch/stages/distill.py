"""The `distill` stage: a student trained from a teacher's predictions.

- soft: (1 - α) CE(student, labels) + α τ² KL(softmax(teacher/τ) ‖ softmax(student/τ)).
- hard: ½ CE(student, labels) + ½ CE(student, argmax teacher) (DeiT's hard distillation).
- token: DeiT's distillation token. The student becomes timm's distilled ViT (a second token
  and head, started as copies of the class token and head); the class head learns the labels,
  the distillation head the teacher's argmax, and inference averages the two heads, as the
  exported ONNX does.

The teacher runs without autograd. When the training images are not augmented its logits are
the same every epoch, so they are computed once, in large batches, and looked up by index.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

from vitdeploy.core.architecture import read_architecture
from vitdeploy.core.errors import UserError
from vitdeploy.recipe.schema import DistillConfig, ModelSpec, Preprocess, TeacherSpec
from vitdeploy.torch.models import add_distillation_token, create_model, load_weights
from vitdeploy.torch.stages.base import StageContext, register_stage
from vitdeploy.torch.stages.loop import LossFn, Normalize, train

TeacherFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (images, indices) -> logits


def load_teacher(spec: TeacherSpec) -> nn.Module:
    """A ViT written by vitdeploy rebuilds from its file; any other timm model from name + overrides."""
    if spec.checkpoint is not None and read_architecture(spec.checkpoint) is not None:
        # create_model takes the architecture from the file when no overrides are given.
        return create_model(ModelSpec(name=spec.name, overrides=spec.overrides, checkpoint=spec.checkpoint))
    if not timm.models.is_model(spec.name):
        raise UserError(f"distill.teacher.name: '{spec.name}' is not a timm model")
    teacher = timm.create_model(spec.name, pretrained=spec.pretrained, **spec.overrides)
    if spec.checkpoint is not None:
        load_weights(teacher, spec.checkpoint)
    return teacher


def check_classes(teacher: nn.Module, student: nn.Module, img_size: int) -> None:
    with torch.inference_mode():
        probe = torch.zeros(1, 3, img_size, img_size)
        t, s = teacher.eval()(probe), student.eval()(probe)
    if t.shape[-1] != s.shape[-1]:
        raise UserError(f"distill.teacher predicts {t.shape[-1]} classes, the student {s.shape[-1]}; they must match")


def soft_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor, cfg: DistillConfig) -> torch.Tensor:
    tau = cfg.temperature
    kl = F.kl_div(F.log_softmax(student / tau, -1), F.log_softmax(teacher / tau, -1), reduction="batchmean", log_target=True)
    ce = F.cross_entropy(student, y, label_smoothing=cfg.label_smoothing)
    return (1 - cfg.alpha) * ce + cfg.alpha * tau * tau * kl


def make_loss(cfg: DistillConfig, teacher_logits: TeacherFn) -> LossFn:
    def loss_fn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        target = teacher_logits(x, idx).float()
        out = model(x)
        smoothing = cfg.label_smoothing
        if cfg.mode == "token":
            cls_logits, dist_logits = out
            loss = 0.5 * F.cross_entropy(cls_logits, y, label_smoothing=smoothing) + 0.5 * F.cross_entropy(
                dist_logits, target.argmax(-1)
            )
            return loss, (cls_logits + dist_logits) / 2
        if cfg.mode == "hard":
            return 0.5 * F.cross_entropy(out, y, label_smoothing=smoothing) + 0.5 * F.cross_entropy(out, target.argmax(-1)), out
        return soft_loss(out, target, y, cfg), out

    return loss_fn


class TeacherTargets:
    """The teacher's logits for a batch: cached per training image when inputs never change."""

    def __init__(self, teacher: nn.Module, device: torch.device, cache_images: torch.Tensor | None, pre: Preprocess) -> None:
        self.teacher = teacher.to(device).eval()
        self.device = device
        self.seconds = 0.0
        self.cache: torch.Tensor | None = None
        if cache_images is not None:
            self.cache = self._logits_of_uint8(cache_images, pre)

    def _logits_of_uint8(self, images: torch.Tensor, pre: Preprocess) -> torch.Tensor:
        normalize = Normalize(pre, torch.device("cpu"))
        return torch.cat([self._run(normalize(chunk)) for chunk in images.split(512)])

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.teacher(x.to(self.device)).float()
        self.seconds += time.perf_counter() - t0
        return out

    def __call__(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        if self.cache is not None:
            return self.cache.to(idx.device)[idx].to(x.device)
        return self._run(x.detach()).clone()  # clone: inference tensors cannot enter autograd


@register_stage(DistillConfig)
def distill(model: nn.Module, ctx: StageContext, cfg: DistillConfig) -> nn.Module:
    teacher = load_teacher(cfg.teacher)
    img_size = model.patch_embed.img_size[0]
    check_classes(teacher, model, img_size)
    if cfg.mode == "token":
        model = add_distillation_token(model)
        model.set_distilled_training(True)
    cache_images = None
    if cfg.augment == "none":
        train_set = ctx.split(ctx.recipe.data.train_split).subset(cfg.train_samples, seed=cfg.seed)
        cache_images = torch.from_numpy(np.ascontiguousarray(train_set.images.transpose(0, 3, 1, 2)))
    targets = TeacherTargets(teacher, ctx.device, cache_images, ctx.recipe.data.preprocess)
    report = train(model, ctx, cfg, make_loss(cfg, targets), "distill")
    if cfg.mode == "token":
        model.set_distilled_training(False)
    held_out = ctx.split(ctx.recipe.data.eval_split).subset(cfg.eval_samples, seed=cfg.seed + 1)
    from vitdeploy.torch.evaluate import torch_accuracy

    ctx.report.update(
        report,
        teacher={
            "name": cfg.teacher.name,
            "held_out_acc": torch_accuracy(teacher, held_out, ctx.recipe.data.preprocess, ctx.device),
        },
        teacher_seconds=round(targets.seconds, 2),
        teacher_logits_cached=targets.cache is not None,
    )
    return model
