"""SAOM = SAM (segment_anything modules, unchanged weights layout) + a class head.

`SaomModel` subclasses `segment_anything.modeling.Sam`, so an official SAM state_dict loads into
it key for key; the only new parameters are `classifier.*`. Its decoder accepts prompts from
several frames in one call (`image_index`), which is what lets the trainer decode every mask of
a batch at once and the generator decode a whole point grid at once. Point prompts go through
`SaomModel.decode_points`, and the one mask SAOM keeps per prompt is `DecoderOutput.keep_best`:
the generator, prompted segmentation, point evaluation and the trainer share both.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer
from torch import nn
from torch.nn import functional as F

from saom_core.data.classes import ClassList
from saom_core.model.architectures import SamConfig
from saom_core.model.crop_head import MaskCropClassifier
from saom_core.model.model_input import ModelInput
from saom_core.model.two_way import one_frame_two_way

HeadInput = Literal["iou_token", "mask_token", "mask_pool"]
HEAD_INPUTS = ("iou_token", "mask_token", "mask_pool")


@dataclass
class DecoderOutput:
    low_res_logits: torch.Tensor  # (P, M, S, S) mask logits at the decoder's resolution
    iou_pred: torch.Tensor  # (P, M)
    class_logits: torch.Tensor | None  # (P, M, C + 1), None for vanilla SAM
    crop_class_logits: torch.Tensor | None = None  # (P, C + 1) crop classifier on each prompt's kept mask (training)

    def keep_best(self) -> KeptMasks:
        """Each prompt's mask with the highest predicted IoU, with its class logits: the mask SAOM is
        trained to output and reports (the first one on a tie)."""
        best = self.iou_pred.argmax(1)
        rows = torch.arange(len(best), device=best.device)
        class_logits = None if self.class_logits is None else self.class_logits[rows, best]
        return KeptMasks(self.low_res_logits[rows, best], self.iou_pred[rows, best], class_logits, best)


@dataclass
class KeptMasks:
    """One mask per prompt, chosen by `DecoderOutput.keep_best`."""

    logits: torch.Tensor  # (P, S, S) mask logits at the decoder's resolution
    iou_pred: torch.Tensor  # (P,)
    class_logits: torch.Tensor | None  # (P, C + 1) the decoder head's, None for vanilla SAM
    index: torch.Tensor  # (P,) which of the decoder's outputs it is


class BatchedMaskDecoder(MaskDecoder):
    """SAM's mask decoder with per-prompt frame indices and the transformer's token outputs exposed.

    Same parameters (and state_dict keys) as `MaskDecoder`; `predict_masks` is the official one except
    that `image_embeddings[image_index]` replaces `repeat_interleave` so prompts of many frames share
    one call, and it also returns the IoU-token and mask-token outputs for the class head. Prompts on
    one frame with one dense embedding go through `one_frame_two_way` (the frame's share of the first
    attention block computed once, not once per prompt).
    """

    def predict_masks_with_tokens(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
        image_index: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        num_prompts = sparse_prompt_embeddings.size(0)
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(num_prompts, -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

        b, (c, h, w) = num_prompts, image_embeddings.shape[1:]
        if image_index is None and dense_prompt_embeddings.shape[0] == 1:  # one frame, one dense embedding
            hs, src = one_frame_two_way(self.transformer, image_embeddings + dense_prompt_embeddings, image_pe, tokens)
        else:
            src = image_embeddings.expand(b, -1, -1, -1) if image_index is None else image_embeddings[image_index]
            hs, src = self.transformer(src + dense_prompt_embeddings, image_pe.expand(b, -1, -1, -1), tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]

        src = src.transpose(1, 2).reshape(b, c, h, w)
        upscaled_embedding = self.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled_embedding.shape
        masks = (hyper_in @ upscaled_embedding.view(b, c, h * w)).view(b, -1, h, w)
        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred, iou_token_out, mask_tokens_out


class ClassifierHead(nn.Module):
    """Linear class head (C classes + background) for each of SAM's mask outputs.

    Inputs (`head_input`):
      * `iou_token` (the authors' choice): the transformer's IoU-token output, one class per prompt;
      * `mask_token`: each mask token's output, so the class follows the mask SAOM keeps;
      * `mask_pool`: the image embedding averaged under each predicted mask (the sigmoid of its
        low-res logits, detached, so the class loss cannot reshape masks), one class per mask.
    Trained from scratch, the token heads pass the class loss into the decoder's shared transformer,
    which stalls mask learning at no better class accuracy, so the tiny config uses `mask_pool`
    (docs/recipe.md, "The class head"). `iou_token` stays the default (the paper's head) for fine-tuning a
    pretrained SAM, whose decoder already localises objects. For small objects seen through a
    coarse encoder, a model can also have a `MaskCropClassifier` that relabels the masks it keeps.
    """

    def __init__(self, dim: int, num_classes_with_background: int, head_input: HeadInput) -> None:
        super().__init__()
        if head_input not in HEAD_INPUTS:
            raise ValueError(f"head_input must be one of {HEAD_INPUTS}, got {head_input!r}")
        self.head_input = head_input
        self.linear = nn.Linear(dim, num_classes_with_background)

    def forward(
        self,
        iou_token_out: torch.Tensor,
        mask_tokens_out: torch.Tensor,
        mask_logits: torch.Tensor | None = None,
        image_embeddings: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(P, D), (P, 4, D) [, (P, 4, S, S) logits, (B, D, g, g) embeddings, (P,) frame of each
        prompt (None: one frame for all)] -> (P, 4, C + 1): logits aligned with SAM's 4 mask outputs."""
        if self.head_input == "iou_token":
            return self.linear(iou_token_out).unsqueeze(1).expand(-1, mask_tokens_out.size(1), -1)
        if self.head_input == "mask_token":
            return self.linear(mask_tokens_out)
        if mask_logits is None or image_embeddings is None:
            raise ValueError("head_input 'mask_pool' needs the mask logits and the image embeddings")
        return self.pool(mask_logits.detach().sigmoid(), image_embeddings, image_index)

    def pool(
        self, masks: torch.Tensor, image_embeddings: torch.Tensor, image_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`mask_pool` logits from soft masks (P, M, S, S) in [0, 1] at the decoder's resolution.

        Training calls this with the ground-truth masks of the objects (the predicted ones are blobs
        early on, whose pooled features are mostly background), inference with the predicted masks.
        """
        side = image_embeddings.shape[-1]
        weights = F.avg_pool2d(masks, masks.shape[-1] // side)  # (P, M, g, g)
        if image_index is None:
            pooled = torch.einsum("pmhw,chw->pmc", weights, image_embeddings[0])
        else:
            pooled = torch.einsum("pmhw,pchw->pmc", weights, image_embeddings[image_index])
        pooled = pooled / (weights.flatten(2).sum(-1, keepdim=True) + 1e-3)
        return self.linear(pooled)


class SaomModel(Sam):
    """SAM plus an optional class head; `class_list is None` is vanilla SAM.

    `crop_classifier` adds a `MaskCropClassifier`: the decoder's head still labels every prompt
    (cheap, and everything mode drops background with it before NMS), and the crop classifier
    labels the masks that are kept (`classify_masks`); its label is the one reported.
    """

    def __init__(
        self, config: SamConfig, class_list: ClassList | None = None, head_input: HeadInput = "iou_token",
        crop_classifier: bool = False,
    ) -> None:
        embed = config.embedding_size
        super().__init__(
            image_encoder=ImageEncoderViT(
                depth=config.encoder_depth,
                embed_dim=config.encoder_embed_dim,
                img_size=config.image_size,
                mlp_ratio=4,
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
                num_heads=config.encoder_num_heads,
                patch_size=config.patch_size,
                qkv_bias=True,
                use_rel_pos=True,
                global_attn_indexes=config.encoder_global_attn_indexes,
                window_size=config.window_size,
                out_chans=config.prompt_embed_dim,
            ),
            prompt_encoder=PromptEncoder(
                embed_dim=config.prompt_embed_dim,
                image_embedding_size=(embed, embed),
                input_image_size=(config.image_size, config.image_size),
                mask_in_chans=config.mask_in_chans,
            ),
            mask_decoder=BatchedMaskDecoder(
                num_multimask_outputs=3,
                transformer=TwoWayTransformer(
                    depth=config.decoder_depth,
                    embedding_dim=config.prompt_embed_dim,
                    mlp_dim=config.decoder_mlp_dim,
                    num_heads=config.decoder_num_heads,
                ),
                transformer_dim=config.prompt_embed_dim,
                iou_head_depth=3,
                iou_head_hidden_dim=config.iou_head_hidden_dim,
            ),
        )
        self.config = config
        self.class_list = class_list
        self.classifier = (
            ClassifierHead(config.prompt_embed_dim, class_list.num_classes_with_background, head_input)
            if class_list is not None
            else None
        )
        self.crop_classifier = (
            MaskCropClassifier(class_list.num_classes_with_background)
            if class_list is not None and crop_classifier
            else None
        )

    def init_from_scratch(self) -> None:
        """ViT-style init of the encoder's absolute position embedding for models without weights.

        SAM initialises it to zeros because it always loads MAE-pretrained weights; from scratch a zero
        start gives the encoder no notion of where a patch is, which slows early training markedly.
        """
        if self.image_encoder.pos_embed is not None:
            nn.init.trunc_normal_(self.image_encoder.pos_embed, std=0.02)

    def classify_masks(
        self, prepared: torch.Tensor, masks: torch.Tensor, image_index: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(B, 3, S, S) model input, (P, s, s) mask probabilities at the decoder's resolution,
        (P,) frame of each mask -> (P, C + 1) class logits from the crop classifier."""
        if self.crop_classifier is None:
            raise ValueError("classify_masks needs a model built with crop_classifier=True")
        return self.crop_classifier(prepared, masks, image_index)

    def kept_class_logits(self, prepared: torch.Tensor, kept: KeptMasks) -> torch.Tensor | None:
        """(P, C + 1) labels of the masks SAOM keeps (one frame's, `prepared` its model input): the crop
        classifier's when the model has one, else the decoder head's for those masks (None: vanilla SAM)."""
        if self.crop_classifier is not None:
            return self.classify_masks(prepared, kept.logits.float().sigmoid())
        return kept.class_logits

    @property
    def class_names(self) -> list[str]:
        from saom_core.data.classes import BACKGROUND

        return [BACKGROUND] + (self.class_list.names if self.class_list else ["object"])

    # ---- frames <-> model input (saom_core.model.model_input, shared with the ONNX backend) ----
    @property
    def model_input(self) -> ModelInput:
        return ModelInput(self.config.image_size, self.config.low_res_size, self.pixel_mean, self.pixel_std)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return self.model_input.input_size(height, width)

    def prepare_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.model_input.prepare_images(images)

    def points_to_input(self, points: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.model_input.points_to_input(points, height, width)

    def logits_to_frame(self, low_res_logits: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return self.model_input.logits_to_frame(low_res_logits, height, width)

    # ---- model parts -------------------------------------------------------------------------
    def encode(self, prepared: torch.Tensor) -> torch.Tensor:
        return self.image_encoder(prepared)

    def decode(
        self,
        image_embeddings: torch.Tensor,
        point_coords: torch.Tensor | None = None,
        point_labels: torch.Tensor | None = None,
        boxes: torch.Tensor | None = None,
        image_index: torch.Tensor | None = None,
        multimask_output: bool = True,
    ) -> DecoderOutput:
        """Decode P prompts. Points are (P, K, 2) in input coordinates with (P, K) labels; boxes (P, 4)."""
        points = (point_coords, point_labels) if point_coords is not None else None
        sparse, dense = self.prompt_encoder(points=points, boxes=boxes, masks=None)
        dense = dense[:1]  # no mask prompts: every prompt's dense embedding is the same no-mask embedding
        masks, iou_pred, iou_token_out, mask_tokens_out = self.mask_decoder.predict_masks_with_tokens(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            image_index=image_index,
        )
        selection = slice(1, None) if multimask_output else slice(0, 1)
        class_logits = None
        if self.classifier is not None:
            class_logits = self.classifier(iou_token_out, mask_tokens_out, masks, image_embeddings, image_index)
            class_logits = class_logits[:, selection]
        return DecoderOutput(masks[:, selection], iou_pred[:, selection], class_logits)

    def decode_points(
        self,
        image_embeddings: torch.Tensor,
        points: torch.Tensor,
        frame_sizes: Sequence[tuple[int, int]],
        image_index: torch.Tensor | None = None,
    ) -> DecoderOutput:
        """Decode one foreground point per prompt, SAM's 3 masks each.

        points: (P, 2) xy pixels; frame_sizes: (height, width) of each frame in `image_embeddings`;
        image_index: (P,) the frame of each point, None for points all on one frame.
        """
        if image_index is None:
            if len(frame_sizes) != 1:
                raise ValueError(f"points of {len(frame_sizes)} frames need the image_index of each point")
            coords = self.points_to_input(points, *frame_sizes[0])
        else:
            scales = torch.stack([self.model_input.input_scale(height, width, points) for height, width in frame_sizes])
            coords = points * scales[image_index]
        labels = torch.ones(len(points), 1, dtype=torch.int, device=points.device)
        return self.decode(image_embeddings, coords[:, None, :], labels, image_index=image_index)


def build_model(
    config: SamConfig,
    class_list: ClassList | None = None,
    head_input: HeadInput = "iou_token",
    crop_classifier: bool = False,
) -> SaomModel:
    return SaomModel(config, class_list, head_input, crop_classifier)
