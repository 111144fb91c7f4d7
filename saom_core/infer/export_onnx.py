"""Export a SAM/SAOM checkpoint to ONNX for onnxruntime / TensorRT (e.g. on a Jetson).

`export_onnx` writes three files into `out_dir`:

* `encoder.onnx`: image (1, 3, S, S) float32, prepared exactly as `SaomModel.prepare_images`
  -> image_embeddings (1, D, g, g).
* `decoder.onnx`: image_embeddings (1, D, g, g), point_coords (P, K, 2), point_labels (P, K)
  -> low_res_logits (P, 3, s, s), iou_predictions (P, 3) and, when the checkpoint has a class
  head, class_logits (P, 3, C + 1). P (prompts) and K (points per prompt) are dynamic axes. The
  outputs equal `SaomModel.decode(..., multimask_output=True)` on the same inputs.
* `classifier.onnx`, only for a model with a crop classifier (which labels the kept masks after
  decoding; its label replaces the decoder's): image (1, 3, S, S) as for the encoder, masks
  (P, s, s) probabilities (sigmoid of the kept low_res_logits) -> class_logits (P, C + 1); needs
  opset >= 16 (RoiAlign with half-pixel alignment).
* `saom_onnx.json`: what a consumer needs to feed and read the models (input size, pixel
  mean/std, preprocessing, point mapping, class names, output meanings).

Exporter: the TorchScript-based one (`torch.onnx.export(..., dynamo=False)`). The torch.export
based default needs the `onnxscript` package, which is not a dependency of this project; the
TorchScript exporter needs nothing beyond torch, handles the dynamic P and K axes through
`dynamic_axes`, and its output matches PyTorch to ~1e-6 in onnxruntime (see
test/test_export_onnx.py). torch warns that it is deprecated; those warnings are silenced here.

Files are exported into a temporary folder inside `out_dir` and moved into place with
`os.replace` only when all of them exported, so a failure never leaves a half-written file or a
mix of old and new models under the final names. Models over protobuf's 2 GB limit (vit_h's
encoder) get their weights in one `<name>.onnx.data` file beside the `.onnx`.
"""
from __future__ import annotations

import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saom_core import __version__
from saom_core.errors import SaomError
from saom_core.io import atomic_write_json
from saom_core.model.checkpoint import load_model
from saom_core.model.saom import SaomModel

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
CLASSIFIER_FILE = "classifier.onnx"
CROP_CLASSIFIER_MIN_OPSET = 16  # RoiAlign's coordinate_transformation_mode (aligned=True) came in opset 16
METADATA_FILE = "saom_onnx.json"
# Opsets allowed: 20 is the TorchScript exporter's newest; below 13 is untested. Checked against
# PyTorch in onnxruntime: decoder at 13, 14, 17, 18, 20; encoder at 13, 17, 20 (tests: 13 and 17).
SUPPORTED_OPSETS = range(13, 21)
DECODER_INPUTS = ("image_embeddings", "point_coords", "point_labels")


class OnnxDecoder(nn.Module):
    """`SaomModel.decode` for point prompts, in a form the ONNX tracer exports with dynamic P and K.

    Uses the model's own modules; only the point embedding is restated: `PromptEncoder._embed_points`
    writes through boolean masks (`emb[labels == -1] = ...`), which exports to Where nodes that fail
    in onnxruntime once P > 1. Here the same sums are `torch.where`/multiplications, as in
    segment_anything's `SamOnnxModel`. Like `decode` (points without a box), one padding point is
    appended to every prompt, so callers must not add SAM-ONNX's extra padding point themselves.
    """

    def __init__(self, model: SaomModel) -> None:
        super().__init__()
        self.model = model

    def embed_points(self, coords: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        pe = self.model.prompt_encoder
        coords = torch.cat([coords + 0.5, torch.zeros_like(coords[:, :1])], dim=1)
        labels = torch.cat([labels, -torch.ones_like(labels[:, :1])], dim=1).unsqueeze(-1)
        embedding = pe.pe_layer.forward_with_coords(coords, pe.input_image_size)
        embedding = torch.where(labels == -1, pe.not_a_point_embed.weight, embedding)
        return embedding + (labels == 0) * pe.point_embeddings[0].weight + (labels == 1) * pe.point_embeddings[1].weight

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor):
        pe = self.model.prompt_encoder
        masks, iou_pred, iou_token_out, mask_tokens_out = self.model.mask_decoder.predict_masks_with_tokens(
            image_embeddings=image_embeddings,
            image_pe=pe.get_dense_pe(),
            sparse_prompt_embeddings=self.embed_points(point_coords, point_labels),
            dense_prompt_embeddings=pe.no_mask_embed.weight.reshape(1, -1, 1, 1),  # broadcasts over P
        )
        multimask = slice(1, None)  # decode(multimask_output=True): SAM's 3 multimask outputs
        outputs: tuple[torch.Tensor, ...] = (masks[:, multimask], iou_pred[:, multimask])
        if self.model.classifier is not None:
            outputs += (self.model.classifier(iou_token_out, mask_tokens_out, masks, image_embeddings)[:, multimask],)
        return outputs


def decoder_output_names(model: SaomModel) -> list[str]:
    names = ["low_res_logits", "iou_predictions"]
    return names + ["class_logits"] if model.classifier is not None else names


def export_onnx(
    checkpoint: str | Path, out_dir: str | Path, opset: int = 17, model_config: str | None = None,
    device: str | torch.device = "cpu",
) -> dict[str, Path]:
    """Export `checkpoint` (SAOM or official SAM) to `out_dir`; returns {"encoder", "decoder", "metadata"} paths.

    A model over 2 GB (vit_h's encoder) also gets `<name>.onnx.data` beside its `.onnx`, listed in
    the metadata's `files.external_data`; keep it in the same folder.

    `model_config` names the architecture of an official SAM state_dict whose shapes do not
    identify it (ignored for SAOM checkpoints, which record theirs). `device` is where the model
    is traced (e.g. "cuda" to export exactly the model a GPU runs; the graph is the same). Raises CheckpointError for a
    missing or invalid checkpoint and SaomError for an unsupported opset or a failed export.
    """
    if isinstance(opset, bool) or not isinstance(opset, int) or opset not in SUPPORTED_OPSETS:
        raise SaomError(
            f"unsupported ONNX opset {opset!r}; supported: {SUPPORTED_OPSETS.start}..{SUPPORTED_OPSETS.stop - 1}"
        )
    model = load_model(checkpoint, config=model_config, device=device)
    device = model.device  # the example inputs must live where the weights do
    if model.crop_classifier is not None and opset < CROP_CLASSIFIER_MIN_OPSET:
        raise SaomError(f"the crop classifier needs ONNX opset >= {CROP_CLASSIFIER_MIN_OPSET} (RoiAlign), got {opset}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SaomError(f"ONNX output directory {out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)

    size, grid, dim = model.config.image_size, model.config.embedding_size, model.config.prompt_embed_dim
    image = torch.zeros(1, 3, size, size, device=device)
    embeddings = torch.zeros(1, dim, grid, grid, device=device)
    coords = torch.full((2, 2, 2), size / 2, device=device)
    labels = torch.tensor([[1.0, 0.0], [1.0, -1.0]], device=device)
    prompt_axes = {0: "num_prompts", 1: "num_points"}
    output_names = decoder_output_names(model)

    tmp = Path(tempfile.mkdtemp(prefix=".saom-onnx-", dir=out_dir))
    try:
        # One folder per model: a model over 2 GB comes out as one file per weight tensor.
        _export(model.image_encoder, (image,), tmp / "encoder" / ENCODER_FILE, opset, ["image"], ["image_embeddings"])
        dynamic_axes = {"point_coords": prompt_axes, "point_labels": prompt_axes}
        dynamic_axes |= {name: {0: "num_prompts"} for name in output_names}
        decoder_args = (embeddings, coords, labels)
        _export(OnnxDecoder(model), decoder_args, tmp / "decoder" / DECODER_FILE, opset, list(DECODER_INPUTS),
                output_names, dynamic_axes)
        files = _single_data_file(tmp / "encoder", ENCODER_FILE) + _single_data_file(tmp / "decoder", DECODER_FILE)
        if model.crop_classifier is not None:
            low = model.config.low_res_size
            masks = torch.zeros(2, low, low, device=device)
            masks[:, low // 4 : low // 2, low // 4 : low // 2] = 1.0
            _export(model.crop_classifier, (image, masks), tmp / "classifier" / CLASSIFIER_FILE, opset,
                    ["image", "masks"], ["class_logits"], {"masks": {0: "num_masks"}, "class_logits": {0: "num_masks"}})
            files += [tmp / "classifier" / CLASSIFIER_FILE]
        metadata = export_metadata(model, opset, checkpoint)
        metadata["files"]["external_data"] = sorted(p.name for p in files if p.suffix == ".data")
        atomic_write_json(tmp / METADATA_FILE, metadata, indent=2)
        # Weights, then graphs, then the metadata: a file under its final name always finds what it refers to.
        for path in sorted(files, key=lambda p: p.suffix == ".onnx") + [tmp / METADATA_FILE]:
            os.replace(path, out_dir / path.name)
        for name in (ENCODER_FILE, DECODER_FILE):
            stale = out_dir / f"{name}.data"
            if stale.exists() and stale.name not in metadata["files"]["external_data"]:
                stale.unlink()  # left by an earlier export of a larger model; nothing refers to it now
        if model.crop_classifier is None and (out_dir / CLASSIFIER_FILE).exists():
            (out_dir / CLASSIFIER_FILE).unlink()  # an earlier export's crop head; this model has none
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    paths = {"encoder": out_dir / ENCODER_FILE, "decoder": out_dir / DECODER_FILE, "metadata": out_dir / METADATA_FILE}
    if model.crop_classifier is not None:
        paths["classifier"] = out_dir / CLASSIFIER_FILE
    return paths


def _export(
    module: nn.Module, args: tuple[torch.Tensor, ...], path: Path, opset: int,
    input_names: list[str], output_names: list[str], dynamic_axes: dict[str, dict[int, str]] | None = None,
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # The legacy exporter's deprecation notice and the tracer's notes on shapes that are
            # constant here (fixed image size, fixed embedding size).
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                module, args, str(path), dynamo=False, opset_version=opset, input_names=input_names,
                output_names=output_names, dynamic_axes=dynamic_axes, do_constant_folding=True,
            )
    except Exception as exc:  # the exporter raises many types; the user needs the stage and the cause
        message = f"ONNX export of {path.name} (opset {opset}) failed: {type(exc).__name__}: {exc}"
        raise SaomError(message) from exc


def _single_data_file(folder: Path, name: str) -> list[Path]:
    """The files of model `name` (alone in `folder`): the .onnx alone, or one `.onnx.data` file + the .onnx.

    The TorchScript exporter writes a model over 2 GB with one external file per weight tensor
    beside the graph; those are gathered into `<name>.onnx.data` (what TensorRT and onnxruntime
    expect next to the model) so the output folder stays tidy and can be copied as is.
    """
    path = folder / name
    others = [p for p in folder.iterdir() if p != path]
    if not others:
        return [path]
    try:
        import onnx
    except ImportError as exc:
        raise SaomError("exporting a model over 2 GB needs the 'onnx' package (pip install onnx)") from exc
    proto = onnx.load(str(path), load_external_data=True)
    for p in others:
        p.unlink()
    path.unlink()
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{name}.data", size_threshold=0)
    return [folder / f"{name}.data", path]


def export_metadata(model: SaomModel, opset: int, checkpoint: str | Path) -> dict[str, Any]:
    """The `saom_onnx.json` contents: everything needed to use the two models without this package."""
    cfg = model.config
    size, grid, low = cfg.image_size, cfg.embedding_size, cfg.low_res_size
    has_head = model.classifier is not None
    class_names = model.class_names
    decoder_outputs: dict[str, Any] = {
        "low_res_logits": {
            "shape": ["num_prompts", 3, low, low],
            "meaning": (
                "mask logits of SAM's 3 multimask outputs over the padded input square at 1/4 resolution; "
                "mask = logits > mask_threshold after the postprocess steps"
            ),
        },
        "iou_predictions": {"shape": ["num_prompts", 3], "meaning": "predicted IoU of each of the 3 masks"},
    }
    if has_head:
        decoder_outputs["class_logits"] = {
            "shape": ["num_prompts", 3, len(class_names)],
            "meaning": (
                "class logits of each mask; softmax over the last axis, index i is class_names[i], "
                "0 = background (not an object of interest)"
            ),
        }
    metadata: dict[str, Any] = {
        "format": "saom_onnx",
        "format_version": 1,
        "saom_version": __version__,
        "checkpoint": str(checkpoint),
        "exporter": f"torch {torch.__version__} torch.onnx.export(dynamo=False)",
        "opset": opset,
        "model_config": cfg.to_dict(),
        "files": {"encoder": ENCODER_FILE, "decoder": DECODER_FILE},
        "input_size": size,
        "embedding_size": grid,
        "embedding_dim": cfg.prompt_embed_dim,
        "low_res_size": low,
        "pixel_mean": [float(v) for v in model.pixel_mean.flatten()],
        "pixel_std": [float(v) for v in model.pixel_std.flatten()],
        "mask_threshold": float(model.mask_threshold),
        "has_class_head": has_head,
        "head_input": model.classifier.head_input if model.classifier is not None else None,
        "class_names": class_names,
        "preprocess": [
            "frame: H x W x 3 uint8 RGB, as float32 0..255",
            f"resize so the longest side is {size}: scale = {size} / max(H, W), new_h = int(H * scale + 0.5), "
            "new_w = int(W * scale + 0.5); bilinear, antialiased when shrinking (torch F.interpolate(mode='bilinear', "
            "align_corners=False, antialias=True); cv2.INTER_AREA / PIL BILINEAR are close)",
            "normalise per channel: (x - pixel_mean) / pixel_std",
            f"pad with zeros (after normalising) at the bottom and right to {size} x {size}",
            f"HWC -> CHW, add a batch axis: encoder input 'image' (1, 3, {size}, {size}) float32",
        ],
        "points": [
            "point_coords (P, K, 2) float32: x, y of frame pixels mapped to model input as "
            "x_in = x * new_w / W, y_in = y * new_h / H",
            "point_labels (P, K) float32: 1 = foreground, 0 = background, -1 = padding (to give every prompt K points)",
            "one prompt (row) gives one object; the model appends its own padding point, do not add one",
        ],
        "encoder": {
            "inputs": {"image": {"shape": [1, 3, size, size], "dtype": "float32"}},
            "outputs": {"image_embeddings": {"shape": [1, cfg.prompt_embed_dim, grid, grid], "dtype": "float32"}},
        },
        "decoder": {
            "inputs": {
                "image_embeddings": {"shape": [1, cfg.prompt_embed_dim, grid, grid], "dtype": "float32"},
                "point_coords": {"shape": ["num_prompts", "num_points", 2], "dtype": "float32"},
                "point_labels": {"shape": ["num_prompts", "num_points"], "dtype": "float32"},
            },
            "outputs": decoder_outputs,
        },
        "postprocess": [
            "optionally keep per prompt the mask with the highest iou_predictions (SAOM's everything mode does)",
            f"upsample low_res_logits bilinearly (align_corners=False) to {size} x {size}",
            "crop to [:new_h, :new_w] (drop the padding)",
            "resize bilinearly to the frame's H x W",
            "mask = logits > mask_threshold",
        ],
    }
    if model.crop_classifier is not None:
        metadata["files"]["classifier"] = CLASSIFIER_FILE
        metadata["classifier"] = {
            "inputs": {
                "image": {
                    "shape": [1, 3, size, size], "dtype": "float32",
                    "meaning": "the encoder's input, as prepared for it",
                },
                "masks": {
                    "shape": ["num_masks", low, low], "dtype": "float32",
                    "meaning": "sigmoid of the low_res_logits of each mask to label (e.g. the ones kept after NMS)",
                },
            },
            "outputs": {
                "class_logits": {
                    "shape": ["num_masks", len(class_names)],
                    "meaning": "class logits of each mask; softmax over the last axis, index i is class_names[i], "
                    "0 = background (not an object of interest)",
                },
            },
        }
    return metadata
