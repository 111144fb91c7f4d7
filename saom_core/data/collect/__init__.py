"""Simulator data collection: one module per simulator behind the `Collector` interface.

    collect_dataset("pybullet", scenes=50, out="data/pb", workers=2)   # what `saom collect` runs
"""
from saom_core.data.collect.base import SIMULATORS, Collector, collector_class, scene_id, scene_rng
from saom_core.data.collect.runner import collect_dataset

__all__ = ["SIMULATORS", "Collector", "collect_dataset", "collector_class", "scene_id", "scene_rng"]
