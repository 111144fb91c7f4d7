"""The segmenter's ONNX Runtime backend: the folder `saom export` writes, run by TensorRT, CUDA or the CPU.

A `Runtime` (saom_core.infer.runtime): it only runs the networks, so everything mode and prompted
mode are the same code as on the PyTorch backend. The folder's `saom_onnx.json` carries what the
networks need around them (input size, pixel statistics, class names, tuned thresholds) and a
format version; a folder of another version, a missing file or a missing onnxruntime is a
SaomError that says what to do. Execution providers: TensorRT, then CUDA, then the CPU, the first
installed (`onnx_provider` forces one); TensorRT keeps its engines in `<folder>/trt_engines`, so
only the first start on a machine pays for building them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saom_core.errors import SaomError
from saom_core.infer.export_onnx import FORMAT_VERSION, METADATA_FILE
from saom_core.model.model_input import ModelInput
from saom_core.model.saom import DecoderOutput
from saom_core.settings import THRESHOLD_NAMES, Thresholds

INSTALL_HINT = ("pip install 'saom_ros[onnx]' (onnxruntime, CPU); for a GPU onnxruntime-gpu, on a Jetson "
                "JetPack's onnxruntime-gpu wheel")
PROVIDERS = {
    "tensorrt": "TensorrtExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "cpu": "CPUExecutionProvider",
}
TRT_CACHE = "trt_engines"
MAX_PROMPTS = 1024  # the TensorRT decoder engine's largest batch of prompts (a 32 x 32 grid at once)


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError as exc:
        raise SaomError(f"backend onnxruntime needs the onnxruntime package, which is not installed: "
                        f"{INSTALL_HINT}") from exc
    return onnxruntime


def execution_providers(choice: str, available: list[str]) -> list[str]:
    """The providers to ask for, best first: for "auto" TensorRT, CUDA, CPU, those `available`;
    a forced one must be available (the CPU follows it, for the nodes it cannot run)."""
    if choice == "auto":
        return [name for name in PROVIDERS.values() if name in available]
    name = PROVIDERS[choice]
    if name not in available:
        raise SaomError(f"onnx_provider {choice}: this onnxruntime has no {name} (it has {', '.join(available)}); "
                        f"install onnxruntime-gpu (CUDA, TensorRT; on a Jetson JetPack's wheel) or use onnx_provider "
                        "auto")
    return [name] if name == PROVIDERS["cpu"] else [name, PROVIDERS["cpu"]]


def read_metadata(folder: Path) -> dict[str, Any]:
    """`saom_onnx.json` of an export folder of this format version, with every file it names present."""
    path = folder / METADATA_FILE
    if not folder.is_dir():
        raise SaomError(f"{folder}: not a folder; backend onnxruntime loads the folder `saom export --out` wrote")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise SaomError(f"{folder}: no {METADATA_FILE}; export the checkpoint with "
                        f"`saom export --out {folder}`") from exc
    except (OSError, ValueError) as exc:
        raise SaomError(f"{path}: unreadable ({exc}); export the checkpoint again") from exc
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if version != FORMAT_VERSION or meta.get("format") != "saom_onnx":
        raise SaomError(f"{folder}: an ONNX export of format version {version}, this SAOM reads version "
                        f"{FORMAT_VERSION}; export the checkpoint again with this version's `saom export`")
    named = [v for k, v in meta["files"].items() if k != "external_data"] + list(meta["files"]["external_data"])
    missing = [name for name in named if not (folder / name).is_file()]
    if missing:
        raise SaomError(f"{folder}: missing {', '.join(missing)} (named by {METADATA_FILE}); copy the whole folder "
                        "or export again")
    return meta


class OnnxRuntime:
    """The networks of an export folder in ONNX Runtime; tensors in and out on `device` (torch)."""

    def __init__(self, folder: str | Path, provider: str = "auto", threads: int = 1,
                 device: torch.device | None = None, half: bool = False) -> None:
        folder = Path(folder).expanduser()
        meta = read_metadata(folder)
        ort = import_onnxruntime()
        self.providers = execution_providers(provider, ort.get_available_providers())
        self._device = device = device or torch.device("cpu")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        fp16 = half or meta["dtype"] == "float16"

        def session(name: str, profile: dict[str, str] | None = None) -> Any:
            try:
                return ort.InferenceSession(str(folder / name), options,
                                            providers=self._provider_options(folder, fp16, profile or {}))
            except Exception as exc:  # onnxruntime raises its own types for corrupt or unsupported models
                raise SaomError(f"{folder / name}: onnxruntime cannot load it ({type(exc).__name__}: {exc}); "
                                "export the checkpoint again") from exc

        files = meta["files"]
        self._encoder = session(files["encoder"])
        self._decoder = session(files["decoder"], {"point_coords": "{}x2x2", "point_labels": "{}x2"})
        self._prior = session(files["object_prior"]) if "object_prior" in files else None
        low = meta["low_res_size"]
        self._classifier = (session(files["classifier"], {"masks": f"{{}}x{low}x{low}"})
                            if "classifier" in files else None)
        self._dtype = np.float16 if meta["dtype"] == "float16" else np.float32
        stats = {k: torch.tensor(meta[k], dtype=torch.float32, device=device).view(3, 1, 1)
                 for k in ("pixel_mean", "pixel_std")}
        self.model_input = ModelInput(meta["input_size"], meta["low_res_size"], stats["pixel_mean"], stats["pixel_std"])
        self.class_names: list[str] = list(meta["class_names"])
        self.head_input: str | None = meta["head_input"]
        self.has_crop_classifier = self._classifier is not None
        self.mask_threshold = float(meta["mask_threshold"])
        self.description = f"{meta.get('description', '')} (ONNX export {folder}, {', '.join(self.providers)})"
        stored = meta.get("tuned_thresholds") or {}
        self.tuned = Thresholds.from_values({k: v for k, v in stored.items() if k in THRESHOLD_NAMES}, "tuned ")

    def _provider_options(self, folder: Path, fp16: bool, profile: dict[str, str]) -> list[Any]:
        """Providers with their options: TensorRT caches its engines in the folder (fp16 ones for
        `half` or an fp16 export) and the range of the dynamic axes in `profile` (shapes with {} for
        the prompts' count); CUDA and CPU need none."""
        out: list[Any] = []
        for name in self.providers:
            if name != PROVIDERS["tensorrt"]:
                out.append(name)
                continue
            options: dict[str, Any] = {
                "trt_engine_cache_enable": True, "trt_engine_cache_path": str(folder / TRT_CACHE),
                "trt_fp16_enable": fp16,
            }
            for key, count in (("min", 1), ("opt", 64), ("max", MAX_PROMPTS)) if profile else ():
                options[f"trt_profile_{key}_shapes"] = ",".join(f"{k}:{v.format(count)}" for k, v in profile.items())
            out.append((name, options))
        return out

    @property
    def device(self) -> torch.device:
        return self._device

    def _run(self, session: Any, **inputs: torch.Tensor) -> list[torch.Tensor]:
        """Run a session on torch tensors: fed as numpy in the export's dtype (no copy for contiguous
        float32 CPU tensors), outputs back as float32 tensors on `device`."""
        feed = {k: np.ascontiguousarray(v.detach().float().cpu().numpy(), dtype=self._dtype) for k, v in inputs.items()}
        return [torch.from_numpy(np.asarray(o, dtype=np.float32)).to(self._device) for o in session.run(None, feed)]

    def encode(self, prepared: torch.Tensor) -> torch.Tensor:
        return self._run(self._encoder, image=prepared)[0]

    def _decode(self, embedding: torch.Tensor, coords: torch.Tensor, labels: torch.Tensor,
                outputs: slice) -> DecoderOutput:
        out = self._run(self._decoder, image_embeddings=embedding, point_coords=coords, point_labels=labels)
        class_logits = out[2][:, outputs] if len(out) > 2 else None
        return DecoderOutput(out[0][:, outputs], out[1][:, outputs], class_logits)

    def decode_points(self, embedding: torch.Tensor, coords: torch.Tensor) -> DecoderOutput:
        padded = torch.cat([coords[:, None, :], torch.zeros_like(coords[:, None, :])], 1)  # + SAM's padding point
        labels = coords.new_tensor([1.0, -1.0]).expand(len(coords), 2)
        return self._decode(embedding, padded, labels, slice(1, None))

    def decode_boxes(self, embedding: torch.Tensor, boxes: torch.Tensor) -> DecoderOutput:
        labels = boxes.new_tensor([2.0, 3.0]).expand(len(boxes), 2)  # a box is its two corners
        return self._decode(embedding, boxes.reshape(-1, 2, 2), labels, slice(0, 1))

    def cell_class_logits(self, embedding: torch.Tensor) -> torch.Tensor:
        assert self._prior is not None, "only mask_pool class heads have a per-cell class map"
        return self._run(self._prior, image_embeddings=embedding)[0]

    def classify_masks(self, prepared: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        assert self._classifier is not None, "only models with a crop classifier classify masks"
        if not len(masks):
            return masks.new_zeros((0, len(self.class_names)))
        return self._run(self._classifier, image=prepared, masks=masks)[0]

    def close(self) -> None:
        self._encoder = self._decoder = self._prior = self._classifier = None
