"""SAM architecture configs: the official vit_b/l/h and small ones for tests and CPU training.

The small configs are shaped so the official `segment_anything.modeling` modules build them
unchanged; only sizes differ. No pretrained weights exist for them: they train from scratch.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from saom_core.errors import ConfigError


@dataclass(frozen=True)
class SamConfig:
    name: str
    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    iou_head_hidden_dim: int = 256
    mask_in_chans: int = 16

    @property
    def embedding_size(self) -> int:
        """Side of the image embedding grid (64 for the official models)."""
        return self.image_size // self.patch_size

    @property
    def low_res_size(self) -> int:
        """Side of the decoder's mask logits (4x the embedding grid)."""
        return 4 * self.embedding_size

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["encoder_global_attn_indexes"] = list(self.encoder_global_attn_indexes)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config keys {sorted(unknown)}; known: {sorted(known)}")
        data = dict(data)
        data["encoder_global_attn_indexes"] = tuple(data.get("encoder_global_attn_indexes", ()))
        return cls(**data)


MODEL_CONFIGS: dict[str, SamConfig] = {
    "vit_b": SamConfig("vit_b", 768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamConfig("vit_l", 1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamConfig("vit_h", 1280, 32, 16, (7, 15, 23, 31)),
    # ~3M parameters, 256 px input: trains from scratch on the CPU in minutes (make demo).
    "tiny": SamConfig(
        "tiny",
        encoder_embed_dim=192,
        encoder_depth=4,
        encoder_num_heads=3,
        encoder_global_attn_indexes=(0, 1, 2, 3),
        image_size=256,
        patch_size=16,
        window_size=0,
        prompt_embed_dim=128,
        decoder_mlp_dim=512,
        decoder_num_heads=4,
        iou_head_hidden_dim=128,
    ),
    # The smallest thing that still has every part: unit tests only.
    "test": SamConfig(
        "test",
        encoder_embed_dim=32,
        encoder_depth=2,
        encoder_num_heads=2,
        encoder_global_attn_indexes=(1,),
        image_size=64,
        patch_size=8,
        window_size=4,
        prompt_embed_dim=32,
        decoder_mlp_dim=64,
        decoder_num_heads=2,
        iou_head_hidden_dim=32,
        mask_in_chans=4,
    ),
}


def get_config(name_or_dict: str | dict[str, Any] | SamConfig) -> SamConfig:
    if isinstance(name_or_dict, SamConfig):
        return name_or_dict
    if isinstance(name_or_dict, dict):
        return SamConfig.from_dict(name_or_dict)
    if name_or_dict not in MODEL_CONFIGS:
        raise ConfigError(f"unknown model config '{name_or_dict}'; known: {sorted(MODEL_CONFIGS)}")
    return MODEL_CONFIGS[name_or_dict]
