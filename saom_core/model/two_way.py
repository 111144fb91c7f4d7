"""SAM's two-way transformer for many prompts on one frame, without repeating per-frame work.

`segment_anything`'s `TwoWayTransformer.forward` takes one copy of the image tokens per prompt. In
its first block those copies are all the same (the frame's embedding plus the no-mask embedding), so
the image side of that block's two cross-attentions (keys and values for tokens-to-image, queries for
image-to-tokens) is the same for every prompt. `one_frame_two_way` computes it once per frame and
broadcasts it; every other step is the library's own modules, called exactly as its forward calls
them. Same outputs (tested against `TwoWayTransformer.forward`), less decoder time per frame
(docs/recipe.md has the measurement).
"""
from __future__ import annotations

import math

import torch
from segment_anything.modeling.transformer import Attention, TwoWayTransformer


def _heads(attention: Attention, projected: torch.Tensor) -> torch.Tensor:
    return attention._separate_heads(projected, attention.num_heads)


def _attend(attention: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """`Attention.forward` from projected, head-separated q, k, v (any of them may broadcast)."""
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return attention.out_proj(attention._recombine_heads(weights @ v))


def one_frame_two_way(
    transformer: TwoWayTransformer, image_embedding: torch.Tensor, image_pe: torch.Tensor, point_embedding: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(1, C, H, W) frame embedding (dense prompt added), (1, C, H, W) positional encoding, (P, T, C)
    prompt tokens -> (P, T, C) tokens, (P, H*W, C) image tokens: `transformer(image_embedding.expand(P),
    image_pe.expand(P), point_embedding)`."""
    keys = image_embedding.flatten(2).permute(0, 2, 1)  # (1, N, C), shared by every prompt
    key_pe = image_pe.flatten(2).permute(0, 2, 1)
    first = transformer.layers[0]
    if not first.skip_first_layer_pe:
        raise ValueError("one_frame_two_way expects SAM's layout: no positional encoding in the first self-attention")
    queries = first.norm1(first.self_attn(q=point_embedding, k=point_embedding, v=point_embedding))

    to_image = first.cross_attn_token_to_image
    q = _heads(to_image, to_image.q_proj(queries + point_embedding))
    k = _heads(to_image, to_image.k_proj(keys + key_pe))  # once per frame
    v = _heads(to_image, to_image.v_proj(keys))  # once per frame
    queries = first.norm2(queries + _attend(to_image, q, k, v))
    queries = first.norm3(queries + first.mlp(queries))

    to_tokens = first.cross_attn_image_to_token
    q = _heads(to_tokens, to_tokens.q_proj(keys + key_pe))  # once per frame
    k = _heads(to_tokens, to_tokens.k_proj(queries + point_embedding))
    v = _heads(to_tokens, to_tokens.v_proj(queries))
    keys = first.norm4(keys + _attend(to_tokens, q, k, v))  # (P, N, C) from here on

    for layer in transformer.layers[1:]:
        queries, keys = layer(queries=queries, keys=keys, query_pe=point_embedding, key_pe=key_pe)
    attn_out = transformer.final_attn_token_to_image(q=queries + point_embedding, k=keys + key_pe, v=keys)
    return transformer.norm_final_attn(queries + attn_out), keys
