"""A run's records: one CSV row and one history entry per step however often the run resumed."""
from __future__ import annotations

import csv
import json

import pytest

from saom_core.train.run_log import CSV_FIELDS, RunLog


def test_resume_drops_what_was_written_after_the_checkpoint(tmp_path):
    log = RunLog(tmp_path)
    log.start()
    log.open()
    for step in (1, 2, 3):
        log.train_step(step, 0, 0.1, {"loss": float(step), "masks_per_s": 5.0, "not_a_column": 1.0})
        log.validation(step, 0, {"mIoU": step / 10, "mAcc": None, "class_accuracy": 0.5})
    log.close()

    resumed = RunLog(tmp_path)
    resumed.resume_at(1)
    resumed.open()
    resumed.train_step(2, 0, 0.1, {"loss": 20.0})
    resumed.validation(2, 0, {"mIoU": 0.9, "mAcc": 0.8, "class_accuracy": None})
    resumed.close()

    with (tmp_path / "metrics.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == CSV_FIELDS
    assert [(r["step"], r["loss"]) for r in rows] == [("1", "1.0"), ("2", "20.0")]
    history = json.loads((tmp_path / "val_history.json").read_text())
    assert [(h["step"], h["mIoU"]) for h in history] == [(1, 0.1), (2, 0.9)]
    assert len(list((tmp_path / "tb").iterdir())) == 2, "one TensorBoard events file per open"


def test_logging_needs_an_open_log(tmp_path):
    log = RunLog(tmp_path)
    log.start()
    with pytest.raises(RuntimeError, match="open"):
        log.train_step(1, 0, 0.1, {"loss": 1.0})
    assert (tmp_path / "metrics.csv").read_text().count("\n") == 1, "nothing logged half-way"
