"""one_frame_two_way is SAM's TwoWayTransformer.forward with the per-frame work done once."""
from __future__ import annotations

import torch

from saom_core.model.architectures import get_config
from saom_core.model.saom import build_model
from saom_core.model.two_way import one_frame_two_way


def test_same_outputs_as_the_library_forward():
    torch.manual_seed(0)
    model = build_model(get_config("test")).eval()
    transformer = model.mask_decoder.transformer
    side, dim, prompts = model.config.embedding_size, model.config.prompt_embed_dim, 5
    frame = torch.randn(1, dim, side, side)
    pe = torch.randn(1, dim, side, side)
    tokens = torch.randn(prompts, 7, dim)
    with torch.no_grad():
        expected_tokens, expected_image = transformer(
            frame.expand(prompts, -1, -1, -1), pe.expand(prompts, -1, -1, -1), tokens
        )
        got_tokens, got_image = one_frame_two_way(transformer, frame, pe, tokens)
    assert got_tokens.shape == expected_tokens.shape and got_image.shape == expected_image.shape
    torch.testing.assert_close(got_tokens, expected_tokens, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_image, expected_image, rtol=1e-5, atol=1e-5)


def test_decoder_paths_agree():
    """decode() on one frame (shared path) equals the per-prompt path the trainer uses (image_index)."""
    torch.manual_seed(1)
    model = build_model(get_config("test")).eval()
    side, dim = model.config.embedding_size, model.config.prompt_embed_dim
    embedding = torch.randn(1, dim, side, side)
    coords = torch.rand(6, 1, 2) * model.config.image_size
    labels = torch.ones(6, 1, dtype=torch.int)
    with torch.no_grad():
        shared = model.decode(embedding, coords, labels)
        per_prompt = model.decode(embedding, coords, labels, image_index=torch.zeros(6, dtype=torch.long))
    torch.testing.assert_close(shared.low_res_logits, per_prompt.low_res_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(shared.iou_pred, per_prompt.iou_pred, rtol=1e-5, atol=1e-5)
