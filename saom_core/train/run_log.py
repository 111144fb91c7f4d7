"""A training run's records for people: metrics.csv, TensorBoard events (tb/), val_history.json.

Only the main process writes them. A resumed run drops the rows written after the checkpoint it
resumes from, so every step is logged once however often the run was interrupted.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Any

from tqdm import tqdm

from saom_core.io import atomic_write_json, atomic_write_text

CSV_FIELDS = [
    "step", "epoch", "lr", "loss", "focal", "dice", "ce", "ce_crop", "iou", "mask_iou", "class_accuracy", "masks_per_s",
]


class RunLog:
    """The records of the run in `run_dir`; `open` before logging, `close` after."""

    def __init__(self, run_dir: Path) -> None:
        self.csv_path = run_dir / "metrics.csv"
        self.history_path = run_dir / "val_history.json"
        self.tensorboard_dir = run_dir / "tb"
        self._writer: Any = None

    def start(self) -> None:
        """A new run: metrics.csv with its header only."""
        atomic_write_text(self.csv_path, _csv_text([]))

    def resume_at(self, step: int) -> None:
        """Drop the log rows written after `step` (the resumed steps write them again)."""
        if not self.csv_path.exists():
            return
        with self.csv_path.open(newline="") as handle:
            rows = [r for r in csv.DictReader(handle) if int(r["step"]) <= step]
        atomic_write_text(self.csv_path, _csv_text(rows))

    def open(self) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(str(self.tensorboard_dir))

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def train_step(self, step: int, epoch: int, lr: float, metrics: dict[str, float]) -> None:
        """One metrics.csv row and the train/* scalars of a step."""
        writer = self._open_writer()
        row: dict[str, float] = {"step": step, "epoch": epoch, "lr": lr}
        row.update({k: metrics[k] for k in CSV_FIELDS if k in metrics})
        with self.csv_path.open("a", newline="") as handle:
            csv.DictWriter(handle, fieldnames=CSV_FIELDS).writerow(row)
        for key, value in row.items():
            if key not in ("step", "epoch"):
                writer.add_scalar(f"train/{key}", value, step)

    def validation(self, step: int, epoch: int, metrics: dict[str, float | None]) -> None:
        """A validation's entry in val_history.json (replacing any from a step at or after it, left
        by an interrupted run), its val/* scalars and one line on the console."""
        writer = self._open_writer()
        history = []
        if self.history_path.exists():
            history = [h for h in json.loads(self.history_path.read_text()) if h["step"] < step]
        history.append({"step": step, "epoch": epoch, **metrics})
        atomic_write_json(self.history_path, history, indent=1)
        for key, value in metrics.items():
            if value is not None:
                writer.add_scalar(f"val/{key}", value, step)
        tqdm.write(
            f"step {step} epoch {epoch}: val mIoU {_fmt(metrics['mIoU'])}, mAcc {_fmt(metrics['mAcc'])}, "
            f"class accuracy {_fmt(metrics['class_accuracy'])}"
        )

    def _open_writer(self) -> Any:
        if self._writer is None:
            raise RuntimeError("RunLog.open() before logging")
        return self._writer


def _csv_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"
