"""On-disk cache of frozen-encoder image embeddings (fp16), shared across epochs and runs.

Entries live under `<cache_dir>/<fingerprint>/` where the fingerprint hashes the encoder's
weights and the preprocessing (input size, pixel statistics, resize method), so changing either
starts a fresh cache instead of silently reusing stale embeddings. Each entry is keyed by the
SHA-1 of the frame's pixels, so re-collected or edited frames are never confused.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from saom_core.io import atomic_torch_save
from saom_core.model.saom import SaomModel

PREPROCESSING_VERSION = "resize-longest-bilinear-antialias-v1"


def encoder_fingerprint(model: SaomModel) -> str:
    digest = hashlib.sha1()
    digest.update(f"{PREPROCESSING_VERSION}:{model.config.image_size}".encode())
    digest.update(model.pixel_mean.cpu().numpy().tobytes() + model.pixel_std.cpu().numpy().tobytes())
    for name, tensor in sorted(model.image_encoder.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:16]


def frame_key(image: np.ndarray) -> str:
    digest = hashlib.sha1(np.ascontiguousarray(image).tobytes())
    digest.update(str(image.shape).encode())
    return digest.hexdigest()


class EmbeddingCache:
    def __init__(self, root: str | Path, model: SaomModel) -> None:
        self.dir = Path(root) / encoder_fingerprint(model)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.model = model

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.pt"

    def get(self, key: str) -> torch.Tensor | None:
        path = self.path(key)
        if not path.exists():
            return None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception:  # a torn or foreign file is just a miss; it is recomputed and replaced
            return None

    @torch.no_grad()
    def put(self, key: str, image: np.ndarray, device: torch.device) -> torch.Tensor:
        """Encode one frame, store it, return the fp16 embedding."""
        prepared = self.model.prepare_images(torch.from_numpy(image)[None].to(device))
        embedding = self.model.encode(prepared)[0].half().cpu()
        atomic_torch_save(self.path(key), embedding)
        return embedding
