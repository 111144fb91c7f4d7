"""Export a SAM/SAOM checkpoint to ONNX for onnxruntime / TensorRT (e.g. on a Jetson).

`export_onnx` writes three files into `out_dir`:

* `encoder.onnx`: image (1, 3, S, S) float32 (float16 with `half`), prepared exactly as `SaomModel.prepare_images`
  -> image_embeddings (1, D, g, g).
* `decoder.onnx`: image_embeddings (1, D, g, g), point_coords (P, K, 2), point_labels (P, K)
  -> low_res_logits (P, 4, s, s), iou_predictions (P, 4) and, when the checkpoint has a class
  head, class_logits (P, 4, C + 1): SAM's single-mask output then its 3 multimask outputs. P
  (prompts) and K (points per prompt) are dynamic axes. Labels are SAM's (1 foreground, 0
  background, -1 padding, 2 and 3 a box's corners) and, as in SAM's own ONNX model, the caller
  appends the padding point to point-only prompts: points + padding give outputs 1..3 of
  `SaomModel.decode(points)`, a box's two corners output 0 of `SaomModel.decode(boxes=...)`.
* `object_prior.onnx`, only for a mask_pool class head: image_embeddings -> cell_class_logits
  (g, g, C + 1), the head applied to each embedding cell (everything mode's object prior).
* `classifier.onnx`, only for a model with a crop classifier (which labels the kept masks after
  decoding; its label replaces the decoder's): image (1, 3, S, S) as for the encoder, masks
  (P, s, s) probabilities (sigmoid of the kept low_res_logits) -> class_logits (P, C + 1); needs
  opset >= 16 (RoiAlign with half-pixel alignment).
* `saom_onnx.json`: what a consumer needs to feed and read the models (input size, pixel
  mean/std, preprocessing, point mapping, class names, output meanings), the thresholds tuned
  for the checkpoint, and `format_version` (FORMAT_VERSION): the onnxruntime backend
  (saom_core.infer.onnx_runtime) refuses a folder of another version.

`half` exports fp16 models (inputs and outputs float16) for GPUs: traced on the given device, whose
fp16 kernels they then use.

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
from saom_core.model.checkpoint import describe_training, load_checkpoint
from saom_core.model.saom import SaomModel

ENCODER_FILE = "encoder.onnx"
DECODER_FILE = "decoder.onnx"
CLASSIFIER_FILE = "classifier.onnx"
PRIOR_FILE = "object_prior.onnx"
# 2: the decoder outputs all 4 masks and takes box corners, the caller pads point prompts, object_prior.onnx
FORMAT_VERSION = 2
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
        labels = labels.unsqueeze(-1)
        # the positional encoding is float32 in an fp16 export too (segment_anything computes it so)
        embedding = pe.pe_layer.forward_with_coords(coords + 0.5, pe.input_image_size).to(coords.dtype)
        embedding = torch.where(labels == -1, pe.not_a_point_embed.weight.to(embedding.dtype), embedding)
        for label, weight in enumerate(pe.point_embeddings):  # 0, 1: points; 2, 3: a box's corners
            embedding = embedding + (labels == label) * weight.weight
        return embedding

    def forward(self, image_embeddings: torch.Tensor, point_coords: torch.Tensor, point_labels: torch.Tensor):
        pe = self.model.prompt_encoder
        masks, iou_pred, iou_token_out, mask_tokens_out = self.model.mask_decoder.predict_masks_with_tokens(
            image_embeddings=image_embeddings,
            image_pe=pe.get_dense_pe().to(image_embeddings.dtype),
            sparse_prompt_embeddings=self.embed_points(point_coords, point_labels),
            dense_prompt_embeddings=pe.no_mask_embed.weight.reshape(1, -1, 1, 1),  # broadcasts over P
        )
        outputs: tuple[torch.Tensor, ...] = (masks, iou_pred)
        if self.model.classifier is not None:
            outputs += (self.model.classifier(iou_token_out, mask_tokens_out, masks, image_embeddings),)
        return outputs


class OnnxObjectPrior(nn.Module):
    """The mask_pool class head on each image-embedding cell (EverythingGenerator's object prior)."""

    def __init__(self, model: SaomModel) -> None:
        super().__init__()
        assert model.classifier is not None
        self.linear = model.classifier.linear

    def forward(self, image_embeddings: torch.Tensor) -> torch.Tensor:
        return self.linear(image_embeddings[0].permute(1, 2, 0))


def decoder_output_names(model: SaomModel) -> list[str]:
    names = ["low_res_logits", "iou_predictions"]
    return names + ["class_logits"] if model.classifier is not None else names


def export_onnx(
    checkpoint: str | Path, out_dir: str | Path, opset: int = 17, model_config: str | None = None,
    device: str | torch.device = "cpu", half: bool = False,
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
    model, info = load_checkpoint(checkpoint, model_config, device)
    device = model.device  # the example inputs must live where the weights do
    dtype = torch.float16 if half else torch.float32
    description = describe_training(model, info.trained_on)
    model = model.to(dtype)
    model.prompt_encoder.pe_layer.float()  # see OnnxDecoder.embed_points
    if model.crop_classifier is not None and opset < CROP_CLASSIFIER_MIN_OPSET:
        raise SaomError(f"the crop classifier needs ONNX opset >= {CROP_CLASSIFIER_MIN_OPSET} (RoiAlign), got {opset}")
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise SaomError(f"ONNX output directory {out_dir} exists and is not a directory")
    out_dir.mkdir(parents=True, exist_ok=True)

    size, grid, dim = model.config.image_size, model.config.embedding_size, model.config.prompt_embed_dim
    image = torch.zeros(1, 3, size, size, device=device, dtype=dtype)
    embeddings = torch.zeros(1, dim, grid, grid, device=device, dtype=dtype)
    coords = torch.full((2, 2, 2), size / 2, device=device, dtype=dtype)
    labels = torch.tensor([[1.0, 0.0], [2.0, 3.0]], device=device, dtype=dtype)
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
        if has_prior(model):
            _export(OnnxObjectPrior(model), (embeddings,), tmp / "prior" / PRIOR_FILE, opset, ["image_embeddings"],
                    ["cell_class_logits"])
            files += [tmp / "prior" / PRIOR_FILE]
        if model.crop_classifier is not None:
            low = model.config.low_res_size
            masks = torch.zeros(2, low, low, device=device, dtype=dtype)
            masks[:, low // 4 : low // 2, low // 4 : low // 2] = 1.0
            _export(model.crop_classifier, (image, masks), tmp / "classifier" / CLASSIFIER_FILE, opset,
                    ["image", "masks"], ["class_logits"], {"masks": {0: "num_masks"}, "class_logits": {0: "num_masks"}})
            files += [tmp / "classifier" / CLASSIFIER_FILE]
        metadata = export_metadata(model, opset, checkpoint, "float16" if half else "float32")
        metadata |= {"tuned_thresholds": info.tuned.values(), "description": description}
        metadata["files"]["external_data"] = sorted(p.name for p in files if p.suffix == ".data")
        atomic_write_json(tmp / METADATA_FILE, metadata, indent=2)
        # Weights, then graphs, then the metadata: a file under its final name always finds what it refers to.
        for path in sorted(files, key=lambda p: p.suffix == ".onnx") + [tmp / METADATA_FILE]:
            os.replace(path, out_dir / path.name)
        for name in (ENCODER_FILE, DECODER_FILE):
            stale = out_dir / f"{name}.data"
            if stale.exists() and stale.name not in metadata["files"]["external_data"]:
                stale.unlink()  # left by an earlier export of a larger model; nothing refers to it now
        for name in [CLASSIFIER_FILE] * (model.crop_classifier is None) + [PRIOR_FILE] * (not has_prior(model)):
            if (out_dir / name).exists():
                (out_dir / name).unlink()  # an earlier export's head; this model has none
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    paths = {"encoder": out_dir / ENCODER_FILE, "decoder": out_dir / DECODER_FILE, "metadata": out_dir / METADATA_FILE}
    if model.crop_classifier is not None:
        paths["classifier"] = out_dir / CLASSIFIER_FILE
    if has_prior(model):
        paths["object_prior"] = out_dir / PRIOR_FILE
    return paths


def has_prior(model: SaomModel) -> bool:
    """Whether the model's class head gives everything mode a per-cell object prior (mask_pool heads)."""
    return model.classifier is not None and model.classifier.head_input == "mask_pool"


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


def export_metadata(model: SaomModel, opset: int, checkpoint: str | Path, dtype: str = "float32") -> dict[str, Any]:
    """The `saom_onnx.json` contents: everything needed to use the models without this package."""
    cfg = model.config
    size, grid, low = cfg.image_size, cfg.embedding_size, cfg.low_res_size
    has_head = model.classifier is not None
    class_names = model.class_names
    decoder_outputs: dict[str, Any] = {
        "low_res_logits": {
            "shape": ["num_prompts", 4, low, low],
            "meaning": (
                "mask logits of SAM's single-mask output then its 3 multimask outputs, over the padded input "
                "square at 1/4 resolution; "
                "mask = logits > mask_threshold after the postprocess steps"
            ),
        },
        "iou_predictions": {"shape": ["num_prompts", 4], "meaning": "predicted IoU of each of the 4 masks"},
    }
    if has_head:
        decoder_outputs["class_logits"] = {
            "shape": ["num_prompts", 4, len(class_names)],
            "meaning": (
                "class logits of each mask; softmax over the last axis, index i is class_names[i], "
                "0 = background (not an object of interest)"
            ),
        }
    metadata: dict[str, Any] = {
        "format": "saom_onnx",
        "format_version": FORMAT_VERSION,
        "dtype": dtype,
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
            f"HWC -> CHW, add a batch axis: encoder input 'image' (1, 3, {size}, {size}) {dtype}",
        ],
        "points": [
            f"point_coords (P, K, 2) {dtype}: x, y of frame pixels mapped to model input as "
            "x_in = x * new_w / W, y_in = y * new_h / H",
            f"point_labels (P, K) {dtype}: 1 = foreground, 0 = background, -1 = padding, 2 and 3 = a box's "
            "top-left and bottom-right corners",
            "one prompt (row) gives one object; as in SAM's ONNX model, append a padding point (0, 0) labelled -1 to "
            "a prompt of points without a box (then use outputs 1..3); a box prompt is its two corners (use output 0)",
        ],
        "encoder": {
            "inputs": {"image": {"shape": [1, 3, size, size], "dtype": dtype}},
            "outputs": {"image_embeddings": {"shape": [1, cfg.prompt_embed_dim, grid, grid], "dtype": dtype}},
        },
        "decoder": {
            "inputs": {
                "image_embeddings": {"shape": [1, cfg.prompt_embed_dim, grid, grid], "dtype": dtype},
                "point_coords": {"shape": ["num_prompts", "num_points", 2], "dtype": dtype},
                "point_labels": {"shape": ["num_prompts", "num_points"], "dtype": dtype},
            },
            "outputs": decoder_outputs,
        },
        "postprocess": [
            "points: outputs 1..3; keep per prompt the one with the highest iou_predictions (SAOM's modes do); "
            "boxes: output 0",
            f"upsample low_res_logits bilinearly (align_corners=False) to {size} x {size}",
            "crop to [:new_h, :new_w] (drop the padding)",
            "resize bilinearly to the frame's H x W",
            "mask = logits > mask_threshold",
        ],
    }
    if has_prior(model):
        metadata["files"]["object_prior"] = PRIOR_FILE
        metadata["object_prior"] = {
            "inputs": {"image_embeddings": {"shape": [1, cfg.prompt_embed_dim, grid, grid], "dtype": dtype}},
            "outputs": {"cell_class_logits": {
                "shape": [grid, grid, len(class_names)],
                "meaning": "the class head on each embedding cell; grid points in cells it calls background need "
                "not be prompted in everything mode",
            }},
        }
    if model.crop_classifier is not None:
        metadata["files"]["classifier"] = CLASSIFIER_FILE
        metadata["classifier"] = {
            "inputs": {
                "image": {
                    "shape": [1, 3, size, size], "dtype": dtype,
                    "meaning": "the encoder's input, as prepared for it",
                },
                "masks": {
                    "shape": ["num_masks", low, low], "dtype": dtype,
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
