"""The training forward pass: encoder (or its trained rest), prompts, one batched decoder call, crop-classifier targets.

It is one `nn.Module` call per step, so DDP (which wraps `TrainForward`) sees the whole forward
pass and all-reduces every gradient.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from saom_core.model.saom import ClassifierHead, DecoderOutput, SaomModel
from saom_core.train.embedding_cache import EncoderSplit
from saom_core.train.prompts import FramePrompts


class TrainForward(nn.Module):
    """Encoder (or, on cached outputs of its frozen part, the rest of it) + prompt building + one
    batched decoder call."""

    def __init__(self, model: SaomModel, gt_pool: bool = True, encoder_split: EncoderSplit | None = None) -> None:
        super().__init__()
        self.model = model
        self.gt_pool = gt_pool
        self.encoder_split = encoder_split

    def forward(
        self,
        prepared: torch.Tensor | None,
        cached: torch.Tensor | None,
        frame_sizes: list[tuple[int, int]],
        make_prompts: Callable[[int, torch.Tensor], FramePrompts],
    ) -> tuple[DecoderOutput, list[FramePrompts], torch.Tensor | None]:
        """-> (decoder output, prompts, class targets of the crop classifier or None).

        prepared: (B, 3, S, S) model input (needed without `cached` and by a crop classifier);
        cached: the frozen part's outputs (`EncoderSplit.frozen_output`), or None to run the encoder.
        """
        if cached is not None:
            if self.encoder_split is None:
                raise ValueError("cached encoder outputs need the EncoderSplit they were made with")
            embeddings = self.encoder_split.trained_output(self.model.image_encoder, cached)
        elif prepared is not None:
            embeddings = self.model.encode(prepared)
        else:
            raise ValueError("TrainForward needs the model input or the cached encoder outputs")
        prompts = [make_prompts(i, embeddings[i].detach()) for i in range(len(frame_sizes))]
        device = embeddings.device
        points = torch.cat([p.points for p in prompts]).to(device)
        image_index = torch.cat(
            [torch.full((len(p.points),), i, dtype=torch.long, device=device) for i, p in enumerate(prompts)]
        )
        out = self.model.decode_points(embeddings, points, frame_sizes, image_index)
        classifier = self.model.classifier
        if self.gt_pool and classifier is not None and classifier.head_input == "mask_pool":
            out = self._classes_from_true_masks(classifier, out, prompts, embeddings, image_index)
        if self.model.crop_classifier is None:
            return out, prompts, None
        if prepared is None:
            raise ValueError("the crop classifier needs the model input of the frames, not only their embeddings")
        positive = torch.cat([p.positive for p in prompts]).to(device)
        true_masks = torch.cat([p.mask_targets for p in prompts]).to(device)
        kept = out.keep_best().logits.detach()  # the mask SAOM would keep
        crops = self.model.classify_masks(prepared, self._masks_to_classify(kept, positive, true_masks), image_index)
        out = DecoderOutput(out.low_res_logits, out.iou_pred, out.class_logits, crops)
        class_ids = torch.cat([p.class_ids for p in prompts]).to(device)
        return out, prompts, crop_targets(kept, positive, true_masks, class_ids, image_index, len(frame_sizes))

    def _masks_to_classify(self, kept: torch.Tensor, positive: torch.Tensor, true_masks: torch.Tensor) -> torch.Tensor:
        """(P, s, s) mask of each prompt for the crop classifier: the predicted mask SAOM would keep
        (what inference classifies) or, for half of the objects when `gt_pool`, the true mask (which
        teaches the classes from the first step). True masks alone do not carry over to predicted
        ones (docs/recipe.md, "The crop classifier")."""
        masks = kept.float().sigmoid()
        if self.gt_pool and positive.any():
            use_true = torch.rand(len(true_masks), device=masks.device) < 0.5
            masks[positive] = torch.where(use_true[:, None, None], true_masks, masks[positive])
        return masks

    @staticmethod
    def _classes_from_true_masks(
        classifier: ClassifierHead, out: DecoderOutput, prompts: list[FramePrompts], embeddings: torch.Tensor,
        image_index: torch.Tensor,
    ) -> DecoderOutput:
        """Class logits of the objects pooled under their ground-truth masks (background points keep
        the predicted ones): the class loss then sees clean object features from the first step."""
        positive = torch.cat([p.positive for p in prompts]).to(embeddings.device)
        if not positive.any() or out.class_logits is None:
            return out
        targets = torch.cat([p.mask_targets for p in prompts]).to(embeddings.device)
        pooled = classifier.pool(targets[:, None], embeddings, image_index[positive])
        class_logits = out.class_logits.clone()
        class_logits[positive] = pooled.expand(-1, class_logits.shape[1], -1).to(class_logits.dtype)
        return DecoderOutput(out.low_res_logits, out.iou_pred, class_logits)


def crop_targets(
    kept: torch.Tensor, positive: torch.Tensor, true_masks: torch.Tensor, class_ids: torch.Tensor,
    image_index: torch.Tensor, frames: int,
) -> torch.Tensor:
    """Class targets of the crop classifier: the prompts' classes, except that a background point
    whose kept mask ((P, s, s) logits) lies mostly on objects is ignored (-100): its crop shows an
    object, and calling that background taught the classifier to call objects background."""
    side = kept.shape[-1]
    objects = torch.zeros(frames, side, side, device=kept.device)
    objects = objects.index_put_((image_index[positive],), (true_masks > 0.5).float(), accumulate=True) > 0
    predicted = kept > 0
    on_objects = (predicted & objects[image_index]).flatten(1).sum(1) / predicted.flatten(1).sum(1).clamp(min=1)
    return torch.where(~positive & (on_objects > 0.5), torch.full_like(class_ids, -100), class_ids)
