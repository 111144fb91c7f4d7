"""`saom segment` with a depth image and intrinsics: 3D results in the JSON."""
from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from saom_core.errors import ConfigError
from saom_core.geometry3d import CameraIntrinsics
from saom_core.infer.files import segment_files
from saom_ros.testing import FakeSegmenter


def test_segment_writes_3d_results(tmp_path):
    h, w = 60, 80
    cv2.imwrite(str(tmp_path / "rgb.png"), np.full((h, w, 3), 128, np.uint8))
    cv2.imwrite(str(tmp_path / "depth.png"), np.full((h, w), 1500, np.uint16))
    camera = CameraIntrinsics(100.0, 100.0, 39.5, 29.5)
    outcomes = segment_files(FakeSegmenter(), [tmp_path / "rgb.png"], tmp_path / "out", depths=[tmp_path / "depth.png"],
                             camera=camera)
    assert outcomes[0].error is None and outcomes[0].instances > 0
    result = json.loads(outcomes[0].json.read_text())
    for inst in result["instances"]:
        obj = inst["object3d"]
        assert obj["surface_centroid"][2] == pytest.approx(1.5) and obj["points"] > 0
        x0, y0, x1, y1 = inst["bbox_xyxy"]
        assert obj["size"][0] == pytest.approx((x1 - x0) * 1.5 / 100.0, rel=0.05)

    without = segment_files(FakeSegmenter(), [tmp_path / "rgb.png"], tmp_path / "plain")
    assert all("object3d" not in i for i in json.loads(without[0].json.read_text())["instances"])
    with pytest.raises(ConfigError, match="one depth image per image"):
        segment_files(FakeSegmenter(), [tmp_path / "rgb.png"], tmp_path / "x", depths=[], camera=camera)
    bad = segment_files(
        FakeSegmenter(), [tmp_path / "rgb.png"], tmp_path / "y", depths=[tmp_path / "none.png"], camera=camera
    )
    assert "not a readable depth image" in bad[0].error
