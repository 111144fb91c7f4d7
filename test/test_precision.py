"""Reduced precision on a CPU is chosen by measurement, cached per CPU model, not by the bf16 flag alone."""
from __future__ import annotations

import json

import pytest
import torch

from saom_core import precision


@pytest.fixture
def probed(monkeypatch, tmp_path):
    """A CPU with native bf16 whose probe returns given timings; counts the probes run."""
    monkeypatch.setenv("SAOM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    calls = []

    def set_timings(fp32: float, bf16: float) -> list[str]:
        def probe(workload, repeats=5):
            calls.append(workload)
            return fp32, bf16

        monkeypatch.setattr(precision, "probe_seconds", probe)
        return calls

    return set_timings


@pytest.mark.parametrize(("fp32", "bf16", "expected"), [
    (1.27, 1.0, torch.bfloat16),  # the AMD EPYC: bf16 1.27x faster
    (0.72, 1.0, None),  # the Intel Xeon with the same flags: bf16 slower
    (1.02, 1.0, None),  # a tie keeps fp32
])
def test_the_measured_format_wins_for_training_and_inference(probed, fp32, bf16, expected):
    probed(fp32, bf16)
    cpu = torch.device("cpu")
    assert precision.reduced_precision(cpu, "train") == expected
    assert precision.reduced_precision(cpu, "infer") == expected


def test_the_probe_runs_once_per_cpu_and_workload_then_the_cache_answers(probed, tmp_path):
    calls = probed(1.3, 1.0)
    for _ in range(3):
        assert precision.cpu_bf16_pays("train") and precision.cpu_bf16_pays("infer")
    assert calls == ["train", "infer"]
    cached = json.loads((tmp_path / "cpu_bf16_probe.json").read_text())
    assert len(cached) == 2 and all(precision.cpu_model() in key for key in cached)
    assert all(entry["speedup"] == pytest.approx(1.3) for entry in cached.values())


def test_a_cpu_without_native_bf16_stays_in_fp32_without_a_probe(monkeypatch, tmp_path):
    monkeypatch.setenv("SAOM_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(precision, "probe_seconds", lambda *a, **k: pytest.fail("no probe without native bf16"))
    assert precision.reduced_precision(torch.device("cpu"), "train") is None


def test_the_probe_times_both_formats():
    fp32, bf16 = precision.probe_seconds("infer", repeats=1)
    assert fp32 > 0 and bf16 > 0
