"""Writing an evaluation report: report.json, report.md (the paper's tables), PNG plots."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from saom_core.data.classes import ClassList
from saom_core.eval.objects3d_eval import format_markdown as format_objects_3d
from saom_core.io import atomic_open, atomic_write_json, atomic_write_text

DEFINITIONS = """\
Definitions (per class, over all its instances in the split, as the authors' evaluation):
IoU = sum of intersections / sum of unions; Acc = sum of intersections / sum of ground-truth
pixels; each object is prompted with one foreground point, its nearest-neighbour-assigned grid
point (assigned with the SAOM model's encoder and shared by both models), and scored on the
model's most confident of its 3 masks. An object with no grid point inside it is scored as an
empty mask. Class accuracy = share of instances whose kept mask gets the right class. mIoU, mAcc
and mean class accuracy average over the classes that occur (classes with 0 occurrences are
listed, not averaged). Everything mode: output masks per frame with each model's generator
settings; mask AP/AR by pycocotools (class-agnostic for both models, per class for SAOM).
"Over objects, random point": the usual interactive benchmark instead: each object prompted with
one random pixel of it (seeded, the same for both models), mean IoU over objects and the share of
objects classified right."""


def _pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def _num(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _frames(base: dict[str, Any], saom: dict[str, Any]) -> str:
    if base["frames"] == saom["frames"]:
        return f"{saom['frames']} frames"
    return f"baseline {base['frames']} frames, SAOM {saom['frames']}"


def _covers(base: dict[str, Any], saom: dict[str, Any], split_frames: int) -> str:
    """What frames everything-mode rows cover, where that is not the whole evaluated split for both."""
    def frames(everything: dict[str, Any]) -> str:
        n = everything["frames"]
        return f"all {n}" if n == split_frames else f"first {n} of {split_frames}"

    if base["frames"] == saom["frames"]:
        return "" if saom["frames"] == split_frames else f", first {saom['frames']} of {split_frames} frames"
    return f"; frames: baseline {frames(base)}, SAOM {frames(saom)}"


def _everything_rows(base: dict[str, Any], saom: dict[str, Any], split_frames: int) -> list[str]:
    """Summary rows of everything mode; each names the frames it covers where that is not the whole
    evaluated split, and ground-truth objects per frame over the same frames stand beside them."""
    covers = _covers(base, saom, split_frames)
    agnostic_b, agnostic_s = base["coco_mask_class_agnostic"], saom["coco_mask_class_agnostic"]
    rows = [
        f"| output masks per frame (everything mode{covers}) "
        f"| {base['masks_per_frame']:.1f} | {saom['masks_per_frame']:.1f} |",
        f"| ground-truth objects per frame (same frames) "
        f"| {base['ground_truth_objects_per_frame']:.1f} | {saom['ground_truth_objects_per_frame']:.1f} |",
        f"| mask AP, class-agnostic{covers} | {_num(agnostic_b['AP'])} | {_num(agnostic_s['AP'])} |",
        f"| mask AP50, class-agnostic{covers} | {_num(agnostic_b['AP50'])} | {_num(agnostic_s['AP50'])} |",
        f"| mask AR100, class-agnostic{covers} | {_num(agnostic_b['AR100'])} | {_num(agnostic_s['AR100'])} |",
    ]
    if saom["coco_mask_per_class"]:
        base_ap = base["coco_mask_per_class"] or {}
        rows.append(
            f"| mask AP, per class{covers} | {_num(base_ap.get('AP'))} | {_num(saom['coco_mask_per_class']['AP'])} |"
        )
    return rows


def render_markdown(report: dict[str, Any], classes: ClassList, images: list[str]) -> str:
    base, saom = report["baseline"], report["saom"]
    lines = [
        "# SAOM evaluation report",
        "",
        f"- dataset: `{report['dataset']}` split `{report['split']}`: "
        f"{report['frames']} frames, {report['objects']} objects",
        f"- SAOM: `{report['saom_checkpoint']}` ({report['saom_model']})",
        f"- baseline: `{report['baseline_checkpoint']}` ({report['baseline_model']})",
        f"- machine: {report['machine']}; evaluated {report['date']} in {report['seconds']:.0f} s",
        "",
        "## Summary",
        "",
        "| metric | baseline | SAOM |",
        "|---|---:|---:|",
        f"| mIoU (%) | {_pct(base['points']['mIoU'])} | {_pct(saom['points']['mIoU'])} |",
        f"| mAcc (%) | {_pct(base['points']['mAcc'])} | {_pct(saom['points']['mAcc'])} |",
        f"| mean classification accuracy "
        f"| {_num(base['points']['mean_class_accuracy'])} | {_num(saom['points']['mean_class_accuracy'])} |",
        f"| mIoU over objects, random point "
        f"| {_num(base['random_points']['instance_mIoU'])} | {_num(saom['random_points']['instance_mIoU'])} |",
        f"| classification accuracy over objects, random point "
        f"| {_num(base['random_points']['instance_class_accuracy'])} "
        f"| {_num(saom['random_points']['instance_class_accuracy'])} |",
    ]
    lines += _everything_rows(base["everything"], saom["everything"], report["frames"])
    if "objects_3d" in report:
        lines += ["", *format_objects_3d(report["objects_3d"], saom["everything"]["frames"])]
    lines += [
        "",
        "## Per-class results (paper Tables 3 and 4)",
        "",
        "| type | size | class | occurrences | baseline IoU | baseline Acc "
        "| SAOM IoU | SAOM Acc | SAOM class accuracy |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for cls in sorted(classes.classes, key=lambda c: (c.type, c.size, c.name)):
        b = base["points"]["per_class"][cls.name]
        s = saom["points"]["per_class"][cls.name]
        lines.append(
            f"| {cls.type} | {cls.size} | {cls.name} | {s['occurrences']} | {_pct(b['IoU'])} | {_pct(b['Acc'])} | "
            f"{_pct(s['IoU'])} | {_pct(s['Acc'])} | {_num(s['class_accuracy'])} |"
        )
    lines += [
        "",
        "## Output masks in everything mode (paper Table 5)",
        "",
        "| | baseline | SAOM |",
        "|---|---:|---:|",
        f"| number of output masks ({_frames(base['everything'], saom['everything'])}) "
        f"| {base['everything']['output_masks']} | {saom['everything']['output_masks']} |",
        f"| ground-truth objects, same frames "
        f"| {base['everything']['ground_truth_objects']} | {saom['everything']['ground_truth_objects']} |",
        f"| output masks per ground-truth object "
        f"| {_num(base['everything']['masks_per_object'], 2)} | {_num(saom['everything']['masks_per_object'], 2)} |",
        f"| objects claimed per frame with nothing of interest (goal <= 0.1; "
        f"{saom['everything'].get('frames_without_objects', 0)} such frames) "
        f"| {_num(base['everything'].get('claims_per_frame_without_objects'), 2)} "
        f"| {_num(saom['everything'].get('claims_per_frame_without_objects'), 2)} |",
        f"| generator settings | {base['generator']} | {saom['generator']} |",
        "",
        DEFINITIONS,
        "",
        "## Figures",
        "",
    ]
    lines += [f"![{Path(p).stem}]({p})" for p in images]
    return "\n".join(lines) + "\n"


def plot_per_class(report: dict[str, Any], classes: ClassList, metric: str, path: Path) -> None:
    """Grouped bars, baseline vs SAOM, for each class that occurs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [c.name for c in classes.classes if report["saom"]["points"]["per_class"][c.name]["occurrences"]]
    base = [100 * (report["baseline"]["points"]["per_class"][n][metric] or 0) for n in names]
    saom = [100 * (report["saom"]["points"]["per_class"][n][metric] or 0) for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(6, 0.5 * len(names) + 2), 4))
    ax.bar(x - 0.2, base, 0.4, label="baseline", color="#9aa5b1")
    ax.bar(x + 0.2, saom, 0.4, label="SAOM", color="#2f80ed")
    ax.set_xticks(x, names, rotation=60, ha="right")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Per-class {metric} from one point prompt")
    ax.legend()
    fig.tight_layout()
    with atomic_open(path) as handle:
        fig.savefig(handle, format="png", dpi=110)
    plt.close(fig)


def write_report(out_dir: Path, report: dict[str, Any], classes: ClassList, overlay_files: list[str]) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_per_class(report, classes, "IoU", out_dir / "per_class_iou.png")
    plot_per_class(report, classes, "Acc", out_dir / "per_class_acc.png")
    atomic_write_json(out_dir / "report.json", report, indent=1)
    markdown = render_markdown(report, classes, ["per_class_iou.png", "per_class_acc.png", *overlay_files])
    atomic_write_text(out_dir / "report.md", markdown)
    return out_dir / "report.md"
