"""Frames to model input and decoder logits back to frame masks, without the network.

SAM's longest-side resize, normalisation and padding, the point mapping and the mask upsampling
need only the input size and the pixel statistics: the PyTorch model (`SaomModel`) and the ONNX
Runtime backend (which has no SaomModel, only `saom_onnx.json`) share this one implementation, so
both backends feed and read their networks identically.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn import functional as F


@dataclass(frozen=True)
class ModelInput:
    image_size: int  # S: the encoder's square input side
    low_res_size: int  # s: the decoder's mask side (S / 4)
    pixel_mean: torch.Tensor  # (3, 1, 1), 0..255 scale, on the device frames are prepared on
    pixel_std: torch.Tensor  # (3, 1, 1)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """Size of a frame after the longest-side resize (before padding), as SAM's ResizeLongestSide."""
        scale = self.image_size / max(height, width)
        return int(height * scale + 0.5), int(width * scale + 0.5)

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, H, W, 3) uint8 frames of one size -> (B, 3, S, S) normalised, resized, zero-padded input."""
        height, width = images.shape[1:3]
        new_h, new_w = self.input_size(height, width)
        x = images.permute(0, 3, 1, 2).float()
        if (new_h, new_w) != (height, width):
            x = F.interpolate(x, (new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        x = (x - self.pixel_mean) / self.pixel_std
        return F.pad(x, (0, self.image_size - new_w, 0, self.image_size - new_h))

    def input_scale(self, height: int, width: int, like: torch.Tensor) -> torch.Tensor:
        """(2,) xy factors from a (height, width) frame's pixels to model input coordinates."""
        new_h, new_w = self.input_size(height, width)
        return torch.tensor([new_w / width, new_h / height], device=like.device, dtype=like.dtype)

    def points_to_input(self, points: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(..., 2) xy pixel coordinates of a (height, width) frame -> model input coordinates."""
        return points * self.input_scale(height, width, points)

    def logits_to_frame(self, low_res_logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(N, M, s, s) decoder logits -> (N, M, height, width), as segment_anything's Sam.postprocess_masks."""
        new_h, new_w = self.input_size(height, width)
        size = self.image_size
        masks = F.interpolate(low_res_logits, (size, size), mode="bilinear", align_corners=False)
        return F.interpolate(masks[..., :new_h, :new_w], (height, width), mode="bilinear", align_corners=False)
