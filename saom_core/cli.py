"""`saom` command line: thin argument parsing over the library modules.

Every user-facing failure is a SaomError, printed as one line `saom: error: ...` with exit code 2.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from saom_core.errors import SaomError

if TYPE_CHECKING:
    from saom_core.infer.types import Segmenter

Handler = Callable[[argparse.Namespace], int]
# Other packages add subcommands through this entry point group (saom_ros adds `saom bag`), so the
# core never imports them. An entry point names a callable `(subparsers, PluginContext) -> None`.
SUBCOMMAND_GROUP = "saom.subcommands"


@dataclass(frozen=True)
class PluginContext:
    """What the core CLI lends a plug-in subcommand, so its model options match `saom segment`'s."""

    add_generator_args: Callable[[argparse.ArgumentParser], None]
    segmenter_from: Callable[[argparse.Namespace], Segmenter]


def _cmd_collect(args: argparse.Namespace) -> int:
    from saom_core.data.collect import collect_dataset

    path = collect_dataset(
        sim=args.sim,
        scenes=args.scenes,
        out=args.out,
        seed=args.seed,
        size=args.size,
        workers=args.workers,
        resume=args.resume,
        classes=args.classes,
        min_area=args.min_area,
        trajectory=args.trajectory,
        objects=args.objects,
        first_scene=args.first_scene,
        randomisation=args.randomisation,
        domain=args.domain,
    )
    print(f"wrote {path}")
    return 0


def _cmd_dataset_check(args: argparse.Namespace) -> int:
    from saom_core.data.check import check_dataset

    report, dataset = check_dataset(args.dir, progress=not args.quiet)
    print(report.format(dataset))
    return 0


def _cmd_dataset_merge(args: argparse.Namespace) -> int:
    from saom_core.data.merge import merge_datasets

    print(f"wrote {merge_datasets(args.parts, args.out)}")
    return 0


def _cmd_dataset_show(args: argparse.Namespace) -> int:
    from saom_core.data.reader import SaomDataset
    from saom_core.viz import draw_instances, save_rgb_png

    dataset = SaomDataset(args.dir, split=args.split)
    if not 0 <= args.index < len(dataset):
        raise SaomError(f"--index {args.index} out of range: {args.dir} has {len(dataset)} frames")
    sample = dataset[args.index]
    overlay = draw_instances(sample.image, sample.masks, sample.labels, sample.class_ids.tolist())
    save_rgb_png(args.out, overlay)
    print(f"frame {sample.image_id} ({sample.meta.get('scene')}, frame {sample.meta.get('frame_index')}): "
          f"{len(sample.labels)} objects -> {args.out}")
    return 0


def _cmd_dataset_import(args: argparse.Namespace) -> int:
    from saom_core.data.classes import ClassList
    from saom_core.data.importer import import_raw

    path = import_raw(args.raw, args.out, ClassList.from_yaml(args.classes), simulator=args.simulator)
    print(f"wrote {path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from saom_core.train.recipe import load_train_config
    from saom_core.train.trainer import Trainer

    config = args.config
    if config is None and args.resume and args.out is not None:
        config = args.out / "config.yaml"
    if config is None:
        raise SaomError("--config is required (e.g. config/train_tiny.yaml)")
    overrides = list(args.overrides)
    if args.data is not None:
        overrides.append(f"data.root={args.data}")
    cfg = load_train_config(config, overrides)
    out = args.out or Path("runs") / Path(config).stem
    result = Trainer(cfg, out, resume=args.resume, progress=not args.quiet).fit()
    best = "n/a" if result.best_score is None else f"{result.best_score:.3f}"
    print(f"trained {result.steps} steps ({result.masks_per_second:.1f} masks/s); best val score {best} "
          "(mIoU, times class accuracy for a model with classes)")
    print(f"checkpoints: {result.last_checkpoint}" + (f", {result.best_checkpoint}" if result.best_checkpoint else ""))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from saom_core.eval.evaluate import EvalSettings, evaluate

    settings = EvalSettings(
        split=args.split, points_per_side=args.points_per_side, max_frames=args.max_frames,
        everything_frames=args.everything_frames, baseline_everything_frames=args.baseline_everything_frames or None,
        overlays=args.overlays, device=args.device,
    )
    report = evaluate(args.checkpoint, args.baseline, args.data, args.out, settings, progress=not args.quiet)
    print(report.read_text().split("## Per-class")[0].rstrip())
    print(f"\nreport: {report}")
    return 0


def _segmenter_from(args: argparse.Namespace):
    from saom_core.infer.segmenter import load_segmenter
    from saom_core.settings import SegmenterSettings

    # Options not given are None: load_segmenter then applies the schema's defaults.
    segmenter = load_segmenter(
        str(args.checkpoint), **{f.name: getattr(args, f.name) for f in fields(SegmenterSettings)}
    )
    print(f"model: {segmenter.trained_on}")
    return segmenter


def _cmd_segment(args: argparse.Namespace) -> int:
    from saom_core.geometry3d import CameraIntrinsics
    from saom_core.infer.files import segment_files

    camera = CameraIntrinsics.parse(args.intrinsics) if args.intrinsics else None
    outcomes = segment_files(_segmenter_from(args), args.images, args.out, depths=args.depth, camera=camera,
                             depth_scale=args.depth_scale)
    for outcome in outcomes:
        if outcome.error:
            print(f"saom: error: {outcome.error}", file=sys.stderr)
        else:
            print(f"{outcome.source}: {outcome.instances} objects -> {outcome.overlay}, {outcome.json}")
    return 1 if any(o.error for o in outcomes) else 0


# Earlier spellings of some options, still accepted.
_OLD_SPELLINGS = {"stability_score_thresh": ["--stability-thresh"], "min_mask_region_area": ["--min-region-area"]}


def _add_generator_args(p: argparse.ArgumentParser) -> None:
    """--checkpoint plus one option per segmenter setting (saom_core.settings.SegmenterSettings)."""
    from saom_core.settings import SegmenterSettings

    p.add_argument("--checkpoint", type=Path, required=True,
                   help="SAOM checkpoint (or official SAM weights); with --backend onnxruntime the folder "
                   "`saom export` wrote")
    add_settings_options(p, SegmenterSettings)


def add_settings_options(p: argparse.ArgumentParser, settings: type) -> None:
    """One option per field of a settings class of the schema (saom_core.settings), default None."""
    from saom_core.settings import Thresholds, spec, value_type

    for f in fields(settings):
        s = spec(f)
        base, _ = value_type(settings, f.name)
        flags = [option_name(f.name), *_OLD_SPELLINGS.get(f.name, [])]
        limits = s.range_text()
        if s.tuned:
            shown = f"default: the checkpoint's tuned value, else the paper's {getattr(Thresholds, f.name)}"
        else:
            value = " ".join(f.default) if isinstance(f.default, tuple) else str(f.default)
            shown = f"default: {value or 'empty'}"
        help_text = f"{s.help} ({limits + '; ' if limits else ''}{shown})".replace("%", "%%")
        # default None everywhere: an option not given is not set, and the schema's default applies.
        if base is bool:
            p.add_argument(*flags, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif base is tuple:
            p.add_argument(*flags, nargs="+", default=None, metavar="NAME", help=help_text)
        else:
            p.add_argument(*flags, type=base, default=None, help=help_text)


def option_name(setting: str) -> str:
    """The command-line option of a setting: pred_iou_thresh -> --pred-iou-thresh."""
    return "--" + setting.replace("_", "-")


def _cmd_demo(args: argparse.Namespace) -> int:
    from saom_core.demo import DemoSettings, run_demo

    run_demo(
        DemoSettings(
            out=args.out, config=args.config, checkpoint=args.checkpoint, data=args.data, scenes=args.scenes,
            seed=args.seed, workers=args.workers, everything_frames=args.everything_frames,
            baseline_everything_frames=args.baseline_everything_frames or None,
            budget_s=args.budget_minutes * 60 or None, overrides=tuple(args.overrides),
        )
    )
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from saom_core.pretrain import PretrainSettings, run_pretrain

    path = run_pretrain(
        PretrainSettings(out=args.out, config=args.config, scenes=args.scenes, seed=args.seed, workers=args.workers,
                         overrides=tuple(args.overrides), eval_frames=args.eval_frames,
                         everything_frames=args.everything_frames),
        progress=not args.quiet,
    )
    print(f"wrote {path} and {path.with_suffix('.json')}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from saom_core.infer.export_onnx import export_onnx

    if args.format != "onnx":
        raise SaomError(f"unknown export format '{args.format}' (supported: onnx)")
    paths = export_onnx(args.checkpoint, args.out, opset=args.opset, model_config=args.model_config,
                        device=args.device, half=args.half)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from saom_core.data.collect.randomise import DOMAINS, TRAINING
    from saom_core.demo import DemoSettings  # torch-free: the demo's defaults have one home
    from saom_core.pretrain import PretrainSettings

    parser = argparse.ArgumentParser(prog="saom", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("collect", help="render a simulator dataset")
    p.add_argument("--sim", default="pybullet", help="pybullet (embedded default) or ai2thor")
    p.add_argument("--scenes", type=int, required=True, help="number of scenes (4 frames each)")
    p.add_argument("--first-scene", type=int, default=0, metavar="K",
                   help="index of the first scene: a shard of scenes K .. K+scenes-1 (merge with saom dataset merge)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=224,
                   help="frame width and height in pixels (--randomisation strong draws each scene's width "
                        "around it and its height by aspect ratio)")
    p.add_argument("--workers", type=int, default=1, help="parallel simulator processes")
    p.add_argument("--resume", action="store_true", help="continue an unfinished or extend a finished collection")
    p.add_argument("--objects", default=None, metavar="FILE",
                   help="object catalogue YAML: classes and their models (pybullet; default: "
                   "config/objects_pybullet.yaml)")
    p.add_argument("--classes", default=None,
                   help="class list YAML (default: the catalogue's classes, or the simulator's own)")
    p.add_argument("--randomisation", choices=TRAINING, default="none",
                   help="domain randomisation of textures, light, camera, sensor noise and depth (pybullet; "
                   "saom_core/data/collect/randomise.py)")
    p.add_argument("--domain", choices=DOMAINS, default="train",
                   help="shifted: a test domain whose textures, light, noise and object colours no "
                   "--randomisation draws from (pybullet)")
    p.add_argument("--min-area", type=int, default=None, help="drop masks smaller than this (pixels)")
    p.add_argument("--trajectory", type=int, default=0, metavar="N",
                   help="N frames per scene from a camera moving in small steps (for tracking; pybullet)")
    p.set_defaults(handler=_cmd_collect)

    p = sub.add_parser("train", help="fine-tune SAOM (single process, or DDP under torchrun)")
    p.add_argument("--config", type=Path, default=None,
                   help="config/train_*.yaml (default on --resume: RUN/config.yaml)")
    p.add_argument("--data", type=Path, default=None, help="dataset directory (overrides data.root)")
    p.add_argument("--out", type=Path, default=None, help="run directory (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from checkpoints/last.pt")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.max_steps=20")
    p.set_defaults(handler=_cmd_train)

    p = sub.add_parser("demo", help="the main job: collect, fine-tune, evaluate, segment, report")
    p.add_argument("--out", type=Path, default=Path("runs/demo"))
    p.add_argument("--config", type=Path, default=Path("config/train_tiny.yaml"))
    p.add_argument("--checkpoint", type=Path, default=None, help="official SAM weights (e.g. sam_vit_b_01ec64.pth)")
    p.add_argument("--data", type=Path, default=None, help="use this dataset instead of collecting one")
    p.add_argument("--scenes", type=int, default=DemoSettings.scenes)
    p.add_argument("--seed", type=int, default=DemoSettings.seed)
    p.add_argument("--workers", type=int, default=DemoSettings.workers)
    p.add_argument("--everything-frames", type=int, default=None, help="frames for everything mode (default: all)")
    p.add_argument(
        "--baseline-everything-frames", type=int, default=DemoSettings.baseline_everything_frames,
        help="frames for the baseline's everything mode (an untrained model prompts every grid point; 0: as SAOM's)",
    )
    p.add_argument(
        "--budget-minutes", type=float, default=0.0,
        help=f"the whole run's time (make demo: 15): training stops early enough to leave "
        f"{DemoSettings.reserve_s:.0f} s for the evaluation and prints the steps it reached; 0: no budget, "
        "train as the config says",
    )
    p.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides")
    p.set_defaults(handler=_cmd_demo)

    p = sub.add_parser("pretrain", help="pretrain the vanilla (class-agnostic) tiny SAM that SAOM fine-tunes from")
    p.add_argument("--out", type=Path, default=PretrainSettings.out,
                   help="run folder: data/, run/ and the exported file; re-running continues what is there")
    p.add_argument("--config", type=Path, default=PretrainSettings.config)
    p.add_argument("--scenes", type=int, default=PretrainSettings.scenes,
                   help="scenes to collect when data/ holds no finished collection (extend one: saom collect --resume)")
    p.add_argument("--seed", type=int, default=PretrainSettings.seed,
                   help="scene seed (disjoint from the demo's and the evaluation's)")
    p.add_argument("--workers", type=int, default=PretrainSettings.workers)
    p.add_argument("--eval-frames", type=int, default=None, help="val frames for the file's figures (default: all)")
    p.add_argument("--everything-frames", type=int, default=PretrainSettings.everything_frames,
                   help="val frames that choose the everything-mode threshold (best F1)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="training config overrides")
    p.set_defaults(handler=_cmd_pretrain)

    p = sub.add_parser("eval", help="the paper's evaluation: SAOM vs a baseline on a dataset split")
    p.add_argument("--checkpoint", type=Path, required=True, help="the SAOM checkpoint to evaluate")
    p.add_argument("--baseline", type=Path, required=True, help="vanilla SAM weights or another checkpoint")
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--out", type=Path, required=True, help="report directory")
    p.add_argument("--points-per-side", type=int, default=None,
                   help="prompt grid (default: the one the checkpoint was trained on, else SAM's 32)")
    p.add_argument("--max-frames", type=int, default=None)
    p.add_argument("--everything-frames", type=int, default=None, help="frames for everything mode (default: all)")
    p.add_argument(
        "--baseline-everything-frames", type=int, default=0,
        help="frames for the baseline's everything mode (0: as SAOM's)",
    )
    p.add_argument("--overlays", type=int, default=4)
    p.add_argument("--device", default="auto")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(handler=_cmd_eval)

    p = sub.add_parser("segment", help="everything-of-interest mode on image files: overlay PNG + JSON each")
    _add_generator_args(p)
    p.add_argument("images", type=Path, nargs="+")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--depth", type=Path, nargs="+", default=None,
                   help="aligned depth image per image (16-bit PNG in mm or float TIFF in m): 3D results in the JSON")
    p.add_argument("--intrinsics", default=None, help="fx,fy,cx,cy in pixels, or a ROS camera calibration YAML")
    p.add_argument("--depth-scale", type=float, default=None, help="metres per depth unit (default 0.001 for 16-bit)")
    p.set_defaults(handler=_cmd_segment)

    p = sub.add_parser("export", help="export encoder and decoder(+class head) to ONNX (for TensorRT on Jetson)")
    p.add_argument("--checkpoint", type=Path, required=True)
    p.add_argument("--format", default="onnx")
    p.add_argument("--out", type=Path, default=Path("export"))
    p.add_argument("--opset", type=int, default=17)
    p.add_argument("--model-config", default=None, help="config of a bare SAM state_dict if it cannot be guessed")
    p.add_argument("--half", action="store_true", help="fp16 models for GPUs (TensorRT, CUDA); trace them on the GPU "
                   "with --device cuda")
    p.add_argument("--device", default="cpu", help="where the model is traced (cpu, cuda, cuda:N)")
    p.set_defaults(handler=_cmd_export)

    dataset_parser = sub.add_parser("dataset", help="check, show, merge or import datasets")
    dataset = dataset_parser.add_subparsers(dest="action", required=True)
    p = dataset.add_parser("check", help="validate a dataset and print counts per split and class")
    p.add_argument("dir", type=Path)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_dataset_check)
    p = dataset.add_parser("merge", help="merge shards collected with --first-scene into one dataset")
    p.add_argument("parts", type=Path, nargs="+", help="finished collections of the same settings, disjoint scenes")
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=_cmd_dataset_merge)
    p = dataset.add_parser("show", help="draw a frame's masks and labels to a PNG")
    p.add_argument("dir", type=Path)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--split", default=None)
    p.add_argument("--out", type=Path, required=True)
    p.set_defaults(handler=_cmd_dataset_show)
    p = dataset.add_parser("import", help="convert the raw per-frame layout (image + mask PNGs + meta.json)")
    p.add_argument("raw", type=Path)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--classes", required=True, help="class list YAML or shipped name (pybullet, ai2thor)")
    p.add_argument("--simulator", default="imported")
    p.set_defaults(handler=_cmd_dataset_import)
    _add_plugin_subcommands(sub)
    return parser


def _add_plugin_subcommands(sub: argparse._SubParsersAction) -> None:
    """Let every installed `saom.subcommands` entry point add its subcommand; a broken one is named
    on stderr and left out, so it cannot take the other commands down with it."""
    context = PluginContext(add_generator_args=_add_generator_args, segmenter_from=_segmenter_from)
    for plugin in entry_points(group=SUBCOMMAND_GROUP):
        try:
            plugin.load()(sub, context)
        except Exception as exc:  # noqa: BLE001 -- any failure of third-party code at load time
            print(f"saom: warning: subcommand '{plugin.name}' ({plugin.value}) is unavailable: {exc}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        return handler(args)
    except SaomError as exc:
        print(f"saom: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("saom: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `saom dataset check D | head`: the reader left, nothing is wrong
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
