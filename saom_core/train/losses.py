"""SAOM's loss: focal + dice on the kept mask, cross-entropy on the class, MSE on predicted IoU.

Each term is a mean over masks (the class term over prompts), so the loss does not grow with the
number of objects in a frame. The kept mask is the best of SAM's 3 by predicted IoU, as the paper;
the IoU head is taught on all 3 (the authors' code never trains it, yet everything mode filters on it).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch.nn import functional as F
from torchvision.ops import sigmoid_focal_loss

from saom_core.model.saom import DecoderOutput

MaskSelection = Literal["pred_iou", "min_loss"]


@dataclass
class LossWeights:
    focal: float = 1.0
    dice: float = 1.0
    ce: float = 1.0
    iou: float = 1.0
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    mask_selection: MaskSelection = "pred_iou"


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Per-mask soft dice loss over the last two dims: 1 - (2|P.T| + eps) / (|P| + |T| + eps)."""
    probs = logits.sigmoid().flatten(-2)
    targets = targets.flatten(-2)
    return 1 - (2 * (probs * targets).sum(-1) + eps) / (probs.sum(-1) + targets.sum(-1) + eps)


def focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float, gamma: float) -> torch.Tensor:
    """Per-mask mean of torchvision's sigmoid focal loss over the last two dims."""
    return sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none").flatten(-2).mean(-1)


def binary_iou(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """IoU of (logits > 0) with (targets > 0.5) over the last two dims; 0/0 counts as 0."""
    pred = (logits > 0).flatten(-2)
    gt = (targets > 0.5).flatten(-2)
    inter = (pred & gt).sum(-1).float()
    union = (pred | gt).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(union))


@dataclass
class LossTerms:
    total: torch.Tensor
    focal: torch.Tensor
    dice: torch.Tensor
    ce: torch.Tensor
    ce_crop: torch.Tensor  # cross-entropy of the crop classifier (0 without one)
    iou: torch.Tensor
    class_accuracy: torch.Tensor  # of the reported label: the crop classifier's when there is one
    mask_iou: torch.Tensor  # IoU of the kept masks (a training metric, no gradient)

    def as_floats(self) -> dict[str, float]:
        return {k: float(v.detach()) for k, v in vars(self).items()}


def saom_loss(
    out: DecoderOutput,
    mask_targets: torch.Tensor,
    class_targets: torch.Tensor,
    positive: torch.Tensor,
    weights: LossWeights,
    crop_targets: torch.Tensor | None = None,
) -> LossTerms:
    """Loss over P prompts.

    out: decoder output for all P prompts (M = 3 masks each); mask_targets: (P_pos, S, S) soft
    targets at the decoder's resolution for the positive prompts, in order; class_targets: (P,)
    class ids, 0 = background; positive: (P,) bool, prompts that have a ground-truth mask (the
    others are background points: class loss only); crop_targets: (P,) targets of the crop
    classifier (default: class_targets; -100 = ignored).
    """
    logits = out.low_res_logits[positive].float()  # (P_pos, M, S, S)
    iou_pred = out.iou_pred.float()
    targets = mask_targets.float().unsqueeze(1).expand_as(logits)
    zero = logits.sum() * 0.0
    if logits.shape[0] > 0:
        focal_all = focal_loss(logits, targets, weights.focal_alpha, weights.focal_gamma)  # (P_pos, M)
        dice_all = dice_loss(logits, targets)
        with torch.no_grad():
            true_iou = binary_iou(logits, targets)
        if weights.mask_selection == "pred_iou":
            kept = iou_pred[positive].argmax(1)
        else:
            kept = (weights.focal * focal_all + weights.dice * dice_all).argmin(1)
        rows = torch.arange(logits.shape[0], device=logits.device)
        focal = focal_all[rows, kept].mean()
        dice = dice_all[rows, kept].mean()
        iou = F.mse_loss(iou_pred[positive], true_iou)
        mask_iou = true_iou[rows, kept].mean()
    else:
        focal = dice = iou = zero
        mask_iou = zero.detach()

    ce = ce_crop = zero
    class_accuracy = zero.detach()
    reported = None
    if out.class_logits is not None and class_targets.numel() > 0:
        chosen = iou_pred.argmax(1)
        reported = out.class_logits[torch.arange(len(chosen), device=chosen.device), chosen].float()
        ce = F.cross_entropy(reported, class_targets)
    if out.crop_class_logits is not None and class_targets.numel() > 0:
        reported = out.crop_class_logits.float()
        targets = class_targets if crop_targets is None else crop_targets
        if (targets != -100).any():  # all ignored would be 0/0
            ce_crop = F.cross_entropy(reported, targets)
    if reported is not None:
        with torch.no_grad():
            correct = reported.argmax(1) == class_targets
            class_accuracy = correct[positive].float().mean() if positive.any() else correct.float().mean()

    total = weights.focal * focal + weights.dice * dice + weights.ce * (ce + ce_crop) + weights.iou * iou
    return LossTerms(total, focal, dice, ce, ce_crop, iou, class_accuracy, mask_iou)
