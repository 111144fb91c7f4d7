"""The crop classifier: a small CNN that classifies each mask from the pixels it covers.

Why: a from-scratch tiny SAM sees a 224 px frame as 16x16 patches, so a 20 px mug, teddy, Lego
brick or cube covers one or two encoder cells and features pooled there (`mask_pool`) cannot tell
them apart (randomly tinted, so colour is no cue); a small CNN on crops of the masks can. The
pooled head stays (its loss also teaches the encoder, and it screens out background before NMS).
The measurements: docs/recipe.md, "The crop classifier".

It looks at the model input (the normalised, resized image) inside the box of each mask, plus the
mask itself as a fourth channel, so it needs no frame-resolution data and works for any model
size. It runs after the decoder on masks SAOM has chosen (everything mode: the few that survive
NMS, not all 1024 grid prompts), so its cost does not grow with the grid.
"""
from __future__ import annotations

import itertools

import torch
from torch import nn
from torchvision.ops import roi_align

CROP_SIDE = 32
WIDTHS = (32, 64, 128)
CONTEXT = 1.15  # the crop box is the mask box's longer side times this, centred on the box


def _block(channels_in: int, channels_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(channels_in, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(channels_out, channels_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


def square_boxes(masks: torch.Tensor, scale: float) -> torch.Tensor:
    """(P, s, s) soft masks -> (P, 4) xyxy square boxes around the pixels > 0.5, in units of
    `scale` mask pixels. An empty mask gets the whole mask area (it is classified, as background)."""
    binary = masks > 0.5
    side = masks.shape[-1]
    rows, cols = binary.any(2), binary.any(1)  # (P, s): which rows / columns hold mask pixels
    index = torch.arange(side, device=masks.device)
    big, small = torch.full_like(index, side), torch.full_like(index, -1)
    y0 = torch.where(rows, index, big).min(1).values
    y1 = torch.where(rows, index, small).max(1).values + 1
    x0 = torch.where(cols, index, big).min(1).values
    x1 = torch.where(cols, index, small).max(1).values + 1
    empty = ~rows.any(1, keepdim=True)
    whole = torch.tensor([0.0, 0.0, side, side], device=masks.device)
    box = torch.where(empty, whole, torch.stack([x0, y0, x1, y1], 1).float())  # where, not indexing: exports to ONNX
    centre = (box[:, :2] + box[:, 2:]) / 2
    half = (box[:, 2:] - box[:, :2]).max(1).values[:, None] / 2 * CONTEXT + 0.5
    return torch.cat([centre - half, centre + half], 1) * scale


class MaskCropClassifier(nn.Module):
    """(images, masks) -> class logits (C classes + background) per mask."""

    def __init__(self, num_classes_with_background: int) -> None:
        super().__init__()
        channels = (4, *WIDTHS)
        self.features = nn.Sequential(*[_block(a, b) for a, b in itertools.pairwise(channels)])
        self.linear = nn.Linear(WIDTHS[-1], num_classes_with_background)

    def forward(
        self, images: torch.Tensor, masks: torch.Tensor, image_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """images (B, 3, S, S) model input; masks (P, s, s) in [0, 1] at the decoder's resolution
        (s = S / 4); image_index (P,) frame of each mask (None: all on frame 0) -> (P, C + 1)."""
        if masks.shape[0] == 0:
            return masks.new_zeros((0, self.linear.out_features))
        scale = images.shape[-1] / masks.shape[-1]
        boxes = square_boxes(masks, scale)
        # frame and mask indices from tensor ops (not len()), so an ONNX trace keeps P dynamic
        first = torch.zeros_like(masks[:, 0, 0])
        index = first if image_index is None else image_index.to(masks.dtype)
        rois = torch.cat([index[:, None], boxes], 1).to(images.dtype)
        pixels = roi_align(images, rois, CROP_SIDE, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        own = torch.cat([(torch.ones_like(first).cumsum(0) - 1)[:, None].to(rois.dtype), rois[:, 1:]], 1)
        mask_crops = roi_align(
            masks[:, None].to(images.dtype), own, CROP_SIDE, spatial_scale=1.0 / scale, sampling_ratio=2, aligned=True
        )
        features = self.features(torch.cat([pixels, mask_crops * 2 - 1], 1))
        return self.linear(features.mean((2, 3)))
