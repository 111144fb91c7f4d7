"""SAOM's loss terms against hand-computed values."""
from __future__ import annotations

import math

import pytest
import torch

from saom_core.model.saom import DecoderOutput
from saom_core.train.losses import LossWeights, binary_iou, dice_loss, focal_loss, saom_loss

LOG2 = math.log(2)


def test_dice_by_hand():
    logits = torch.zeros(1, 2, 2)  # p = 0.5 everywhere
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    # 1 - (2 * 0.5 + 1) / (2 + 1 + 1)
    assert dice_loss(logits, target).item() == pytest.approx(0.5)


def test_focal_by_hand():
    logits = torch.zeros(1, 2, 2)
    target = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    positive = 0.25 * 0.5**2 * LOG2  # alpha * (1 - p_t)^gamma * CE
    negative = 0.75 * 0.5**2 * LOG2
    expected = (positive + 3 * negative) / 4
    assert focal_loss(logits, target, alpha=0.25, gamma=2.0).item() == pytest.approx(expected, rel=1e-5)


def test_binary_iou_by_hand():
    logits = torch.tensor([[[5.0, 5.0], [-5.0, -5.0]]])
    target = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert binary_iou(logits, target).item() == pytest.approx(1 / 3)
    assert binary_iou(torch.full((1, 2, 2), -1.0), torch.zeros(1, 2, 2)).item() == 0.0


def test_saom_loss_combines_terms_per_mask():
    # prompt 0 is an object (target: top-left pixel), prompt 1 a background point.
    low_res = torch.zeros(2, 3, 2, 2)
    low_res[0, 1] = torch.tensor([[5.0, -5.0], [-5.0, -5.0]])  # mask 1 of prompt 0 is exactly right
    iou_pred = torch.tensor([[0.1, 0.9, 0.2], [0.5, 0.1, 0.1]])  # prompt 0 keeps mask 1 by predicted IoU
    class_logits = torch.zeros(2, 3, 3)
    class_logits[0, 1, 2] = 2.0  # kept mask of prompt 0 says class 2
    class_logits[1, 0, 0] = 1.0  # kept mask of prompt 1 says background
    out = DecoderOutput(low_res, iou_pred, class_logits)
    targets = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    class_targets = torch.tensor([2, 0])
    positive = torch.tensor([True, False])
    weights = LossWeights(focal=2.0, dice=3.0, ce=5.0, iou=7.0)
    terms = saom_loss(out, targets, class_targets, positive, weights)

    kept = low_res[0, 1][None]
    focal = focal_loss(kept, targets, 0.25, 2.0).item()
    dice = dice_loss(kept, targets).item()
    ce = (-math.log(math.exp(2) / (math.exp(2) + 2)) - math.log(math.e / (math.e + 2))) / 2
    true_iou = torch.tensor([0.0, 1.0, 0.0])  # masks 0 and 2 are empty (logits 0 are not > 0)
    iou = ((iou_pred[0] - true_iou) ** 2).mean().item()
    assert terms.focal.item() == pytest.approx(focal, rel=1e-5)
    assert terms.dice.item() == pytest.approx(dice, rel=1e-5)
    assert terms.ce.item() == pytest.approx(ce, rel=1e-5)
    assert terms.iou.item() == pytest.approx(iou, rel=1e-5)
    assert terms.total.item() == pytest.approx(2 * focal + 3 * dice + 5 * ce + 7 * iou, rel=1e-5)
    assert terms.class_accuracy.item() == 1.0
    assert terms.mask_iou.item() == pytest.approx(1.0)


@pytest.mark.parametrize(("selection", "expected_mask"), [("pred_iou", 0), ("min_loss", 2)])
def test_mask_selection_rules(selection, expected_mask):
    low_res = torch.full((1, 3, 2, 2), -5.0)
    low_res[0, 1, 0] = 5.0  # mask 1: the top row, half right
    low_res[0, 2, 0, 0] = 5.0  # mask 2: exactly the target
    iou_pred = torch.tensor([[0.9, 0.5, 0.1]])  # the head is confident in the empty mask 0
    targets = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    weights = LossWeights(focal=0.0, dice=1.0, ce=0.0, iou=0.0, mask_selection=selection)
    terms = saom_loss(DecoderOutput(low_res, iou_pred, None), targets, torch.tensor([1]), torch.tensor([True]), weights)

    expected = dice_loss(low_res[0, expected_mask][None], targets)
    assert terms.dice.item() == pytest.approx(expected.item(), rel=1e-5)


def test_loss_does_not_grow_with_the_number_of_objects():
    def loss_for(n: int) -> float:
        low_res = torch.zeros(n, 3, 4, 4)
        targets = torch.zeros(n, 4, 4)
        targets[:, :2, :2] = 1
        out = DecoderOutput(low_res, torch.zeros(n, 3), torch.zeros(n, 3, 4))
        return saom_loss(
            out, targets, torch.ones(n, dtype=torch.long), torch.ones(n, dtype=torch.bool), LossWeights()
        ).total.item()

    assert loss_for(1) == pytest.approx(loss_for(9))
