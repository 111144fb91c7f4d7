"""On-disk cache of what the frozen part of the image encoder outputs (fp16), shared across epochs and runs.

With the whole encoder frozen that is the image embedding. When its last blocks (and neck) train,
the cache holds the tokens after the frozen blocks and each step runs only the trained rest
(`EncoderSplit`): the classes can then shape the features at a fraction of the encoder's cost.

Entries live under `<cache_dir>/<fingerprint>/` where the fingerprint hashes the frozen part's
weights, where it ends and the preprocessing (input size, pixel statistics, resize method), so
changing any of them starts a fresh cache instead of silently reusing stale entries. Each entry is
keyed by the SHA-1 of the frame's pixels, so re-collected or edited frames are never confused.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from segment_anything.modeling import ImageEncoderViT

from saom_core.io import atomic_torch_save
from saom_core.model.saom import SaomModel

PREPROCESSING_VERSION = "resize-longest-bilinear-antialias-v1"


@dataclass(frozen=True)
class EncoderSplit:
    """Where the frozen part of a SAM image encoder ends: after its first `frozen_blocks` transformer
    blocks, or (`whole`) after the neck, when nothing of the encoder trains."""

    frozen_blocks: int
    whole: bool

    @classmethod
    def of(cls, encoder: ImageEncoderViT) -> EncoderSplit | None:
        """The split of an encoder whose trainable parameters all come after its frozen ones (a
        suffix of blocks and the neck); None when the patch embedding or position embedding train
        (nothing of a frame's encoding can be reused) or a frozen block follows a trained one."""
        def trains(module: torch.nn.Module) -> bool:
            return any(p.requires_grad for p in module.parameters())

        stem_trains = trains(encoder.patch_embed) or (encoder.pos_embed is not None and encoder.pos_embed.requires_grad)
        if stem_trains:
            return None
        flags = [trains(block) for block in encoder.blocks]
        first = flags.index(True) if True in flags else len(flags)
        if any(not flag for flag in flags[first:]):
            return None
        return cls(first, first == len(flags) and not trains(encoder.neck))

    def frozen_output(self, encoder: ImageEncoderViT, prepared: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) model input -> the frozen part's output: (B, D, g, g) embeddings when
        `whole`, else (B, g, g, C) tokens after the frozen blocks."""
        if self.whole:
            return encoder(prepared)
        x = encoder.patch_embed(prepared)
        if encoder.pos_embed is not None:
            x = x + encoder.pos_embed
        for block in encoder.blocks[: self.frozen_blocks]:
            x = block(x)
        return x

    def trained_output(self, encoder: ImageEncoderViT, frozen: torch.Tensor) -> torch.Tensor:
        """`frozen_output` -> (B, D, g, g) image embeddings, through the trained blocks and neck."""
        if self.whole:
            return frozen
        x = frozen
        for block in encoder.blocks[self.frozen_blocks :]:
            x = block(x)
        return encoder.neck(x.permute(0, 3, 1, 2))

    def frozen_state(self, encoder: ImageEncoderViT) -> dict[str, torch.Tensor]:
        """The weights the cached output depends on."""
        if self.whole:
            return encoder.state_dict()
        blocks = {f"blocks.{i}." for i in range(self.frozen_blocks)}
        return {
            name: tensor for name, tensor in encoder.state_dict().items()
            if name.startswith(("patch_embed.", "pos_embed")) or any(name.startswith(b) for b in blocks)
        }


def encoder_fingerprint(model: SaomModel, split: EncoderSplit) -> str:
    digest = hashlib.sha1()
    digest.update(f"{PREPROCESSING_VERSION}:{model.config.image_size}".encode())
    if not split.whole:
        digest.update(f"tokens after block {split.frozen_blocks}".encode())
    digest.update(model.pixel_mean.cpu().numpy().tobytes() + model.pixel_std.cpu().numpy().tobytes())
    for name, tensor in sorted(split.frozen_state(model.image_encoder).items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def frame_key(image: np.ndarray) -> str:
    digest = hashlib.sha1(np.ascontiguousarray(image).tobytes())
    digest.update(str(image.shape).encode())
    return digest.hexdigest()


class EmbeddingCache:
    def __init__(self, root: str | Path, model: SaomModel, split: EncoderSplit) -> None:
        self.dir = Path(root) / encoder_fingerprint(model, split)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model = model
        self.split = split

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.pt"

    def get(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            # weights_only: a tensor is all an entry holds, and anything else could run code
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a torn, foreign or hostile file is just a miss; it is recomputed and replaced
            return None

    @torch.no_grad()
    def put(self, key: str, image: np.ndarray, device: torch.device) -> torch.Tensor:
        """Run the frozen part on one frame, store its output, return it (fp16)."""
        prepared = self.model.prepare_images(torch.from_numpy(image)[None].to(device))
        output = self.split.frozen_output(self.model.image_encoder, prepared)[0].half().cpu()
        atomic_torch_save(self.path(key), output)
        return output
