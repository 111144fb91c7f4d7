"""Domain randomisation: each part changes a frame as intended, a seed reproduces a frame exactly,
the shifted test domain draws from ranges no training preset reaches."""
from __future__ import annotations

import dataclasses

import cv2
import numpy as np
import pytest

from saom_core.cli import main
from saom_core.data.classes import ClassList
from saom_core.data.collect import collect_dataset
from saom_core.data.collect import randomise as rz
from saom_core.data.collect.pybullet import PyBulletCollector
from saom_core.errors import ConfigError

QUIET = dataclasses.replace(  # every part off: tests switch on one at a time
    rz.DEFAULT, exposure=(1.0, 1.0), white_balance=0.0, shot_noise=(0.0, 0.0), read_noise=(0.0, 0.0), defocus_p=0.0,
    motion_p=0.0, jpeg_p=0.0, depth_noise=(0.0, 0.0), depth_edge_px=(0.0, 0.0), dark_hole_p=0.0, highlight_level=1.01,
)


@pytest.fixture(scope="module")
def classes() -> ClassList:
    return ClassList.from_yaml("pybullet")


@pytest.fixture(scope="module")
def randomised(classes):
    with PyBulletCollector(classes, size=96, min_area=10, randomisation="default") as collector:
        return collector.collect_scene(0, seed=4) + collector.collect_scene(1, seed=4)


def test_a_seed_reproduces_a_randomised_frame_exactly(classes, randomised):
    with PyBulletCollector(classes, size=96, min_area=10, randomisation="default") as collector:
        again = collector.collect_scene(1, seed=4)  # without scene 0 before it
    with PyBulletCollector(classes, size=96, min_area=10) as collector:
        plain = collector.collect_scene(1, seed=4)
    for a, b, c in zip(randomised[4:], again, plain, strict=True):
        assert a.image.tobytes() == b.image.tobytes() and a.depth.tobytes() == b.depth.tobytes()
        np.testing.assert_array_equal(a.masks, b.masks)
        assert a.meta == b.meta and a.objects3d == b.objects3d
        assert a.meta["randomisation"]["preset"] == "default" and "randomisation" not in c.meta
        assert a.image.tobytes() != c.image.tobytes()


def test_randomised_intrinsics_still_project_the_ground_truth(randomised):
    """The projection built from drawn intrinsics and the recorded intrinsics agree: a mask's pixels,
    lifted with their (noisy) depth through the recorded intrinsics, land in the object's 3D box."""
    checked = 0
    for frame in randomised:
        k = frame.meta["intrinsics"]
        assert frame.image.shape[:2] == (frame.meta["camera"]["height"], frame.meta["camera"]["width"])
        for mask, obj in zip(frame.masks, frame.objects3d, strict=True):
            v, u = np.nonzero(mask & (frame.depth > 0))
            if len(v) < 20:  # small objects can lie wholly in the edge band of holes
                continue
            z = frame.depth[v, u]
            points = np.stack([(u - k["cx"]) * z / k["fx"], (v - k["cy"]) * z / k["fy"], z], axis=1)
            inside = ((points > np.array(obj["aabb_min"]) - 0.04) & (points < np.array(obj["aabb_max"]) + 0.04)).all(1)
            assert inside.mean() > 0.9, (obj, inside.mean())
            checked += 1
    assert checked >= 10
    assert len({(f.meta["intrinsics"]["cx"], f.meta["intrinsics"]["fx"]) for f in randomised}) == 2  # per scene


def test_strong_draws_each_scene_s_resolution_and_aspect_ratio(classes):
    with PyBulletCollector(classes, size=96, min_area=10, randomisation="strong") as collector:
        frames = [collector.collect_scene(scene, seed=4)[0] for scene in range(4)]
    sizes = {frame.image.shape[:2] for frame in frames}
    assert len({w for _, w in sizes}) > 1 and len({h / w for h, w in sizes}) > 1, sizes
    for frame in frames:
        height, width = frame.image.shape[:2]
        assert 72 <= width <= 120 and width % 2 == 0 and (height, width) == frame.depth.shape
        assert frame.meta["intrinsics"]["cx"] == pytest.approx(width / 2, abs=0.07 * width)


def test_shot_and_read_noise_have_the_photon_statistics():
    rng = np.random.default_rng(0)
    for level in (0.0, 0.1, 0.4, 0.9):
        flat = np.full((400, 400), level, np.float32)
        noisy = rz.add_sensor_noise(flat, shot=0.004, read=0.01, rng=rng)
        assert noisy.var() == pytest.approx(0.004 * level + 0.01**2, rel=0.05)
        assert abs(noisy.mean() - level) < 1e-3


def test_depth_noise_grows_with_distance_squared_and_is_millimetres():
    settings = dataclasses.replace(QUIET, depth_noise=(0.004, 0.004))
    grey = np.full((300, 300, 3), 128, np.uint8)
    for z in (1.0, 2.0, 4.0):
        depth, drawn = rz.depth_model(np.full((300, 300), z, np.float32), grey, settings, np.random.default_rng(1))
        assert drawn["holes"] == 0 and (depth > 0).all()
        assert depth.std() == pytest.approx(0.004 * z**2, rel=0.05)
        np.testing.assert_allclose(depth * 1000, np.round(depth * 1000), atol=1e-3)


def _scene_with_a_box():
    """A wall at 3 m with a box at 1 m in front; a dark patch and a saturated highlight on the wall."""
    depth = np.full((120, 160), 3.0, np.float32)
    depth[40:80, 50:90] = 1.0
    image = np.full((120, 160, 3), 140, np.uint8)
    image[10:30, 10:40] = 5  # dark
    image[90:110, 120:150] = 255  # highlight
    return depth, image


def test_depth_holes_only_where_the_rule_says():
    depth, image = _scene_with_a_box()
    settings = dataclasses.replace(QUIET, depth_edge_px=(2.0, 2.0), dark_level=0.06, dark_hole_p=0.5,
                                   highlight_level=0.99)
    noisy, _ = rz.depth_model(depth, image, settings, np.random.default_rng(2))
    holes = noisy == 0
    edges = rz.depth_edges(depth, 2)
    dark = np.zeros_like(holes)
    dark[10:30, 10:40] = True
    bright = np.zeros_like(holes)
    bright[90:110, 120:150] = True
    assert not (holes & ~(edges | dark | bright)).any()  # nowhere else
    assert holes[edges].all() and holes[bright].all()  # edges and highlights always
    assert holes[dark].mean() == pytest.approx(0.5, abs=0.1)  # dark surfaces by chance
    assert edges[40:80, 48:52].all() and not edges[60, 60:80].any()  # the band hugs the box's outline
    np.testing.assert_array_equal(noisy[~holes], depth[~holes])  # no noise asked for


def _sharpness(image: np.ndarray) -> float:
    return float(cv2.Laplacian(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY), cv2.CV_64F).var())


@pytest.mark.parametrize("blur", [{"defocus_p": 1.0, "defocus_px": (1.5, 1.5)},
                                  {"motion_p": 1.0, "motion_px": (5.0, 5.0)}])
def test_blur_is_on(blur):
    checks = np.kron((np.indices((12, 12)).sum(0) % 2) * 200 + 30, np.ones((8, 8))).astype(np.uint8)
    image = np.repeat(checks[..., None], 3, axis=2)
    clean, _ = rz.camera_model(image, QUIET, np.random.default_rng(0))
    blurred, drawn = rz.camera_model(image, dataclasses.replace(QUIET, **blur), np.random.default_rng(0))
    np.testing.assert_array_equal(clean, image)
    assert ("defocus_px" in drawn) != ("motion_px" in drawn)
    assert _sharpness(blurred) < 0.6 * _sharpness(image)
    # blur moves light (in linear light, as optics do), it does not add any
    assert rz.srgb_to_linear(blurred).mean() == pytest.approx(rz.srgb_to_linear(image).mean(), rel=0.02)


def test_exposure_white_balance_and_jpeg():
    image = np.full((64, 64, 3), 100, np.uint8)
    settings = dataclasses.replace(QUIET, exposure=(2.0, 2.0))
    brighter, drawn = rz.camera_model(image, settings, np.random.default_rng(0))
    assert drawn["exposure"] == [2.0, 2.0, 2.0]
    assert brighter.mean() == pytest.approx(255 * (2 * (100 / 255) ** 2.2) ** (1 / 2.2), abs=1)  # linear light
    tinted, drawn = rz.camera_model(image, dataclasses.replace(QUIET, white_balance=0.2), np.random.default_rng(3))
    assert len(set(tinted.reshape(-1, 3).mean(0).round())) == 3  # one gain per channel
    noisy = rz.add_sensor_noise(rz.srgb_to_linear(image), 0.0, 0.05, np.random.default_rng(0))
    compressed = rz.jpeg(rz.linear_to_srgb(noisy), 20)
    assert np.abs(compressed.astype(int) - image).mean() < np.abs(rz.linear_to_srgb(noisy).astype(int) - image).mean()


def _ranges(value) -> list[tuple[float, float]]:
    return [(v, v) for v in value] if isinstance(value[0], str) else [value]


def test_shifted_domain_draws_from_ranges_no_training_preset_reaches():
    for name in rz.DISJOINT:
        def of(settings, name=name):
            return getattr(settings.light, name[6:]) if name.startswith("light.") else getattr(settings, name)
        shifted = of(rz.SHIFTED)
        for training in rz.TRAINING:
            other = of(rz.PRESETS[training])
            if isinstance(shifted[0], str):
                assert not set(shifted) & set(other), (name, training)
            else:
                assert shifted[1] < other[0] or shifted[0] > other[1], (name, training, shifted, other)
    assert rz.preset("none", "shifted") is rz.SHIFTED
    with pytest.raises(ConfigError, match="leave out --randomisation"):
        rz.preset("strong", "shifted")
    with pytest.raises(ConfigError, match="--domain"):
        rz.preset("none", "mars")


@pytest.mark.parametrize("kind", ["noise", "stripes", "checks", "wood", "dots", "marble"])
def test_textures_show_two_colours_of_the_asked_brightness(kind):
    pixels = rz.texture_image(kind, np.random.default_rng(5), value=(0.2, 0.42), contrast=(0.3, 0.3))
    assert pixels.shape == (rz.TEXTURE_SIZE, rz.TEXTURE_SIZE, 3)
    assert pixels.max(axis=2).max() <= 0.42 * 255 + 2 and pixels.max(axis=2).min() >= 0.2 * 255 - 3
    assert pixels.std() > 2  # a pattern, not one colour


def test_views_with_nothing_of_interest_are_frames_without_masks(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(rz.PRESETS, "default", dataclasses.replace(rz.DEFAULT, empty_p=1.0))
    out = tmp_path / "empty"
    collect_dataset("pybullet", scenes=1, out=out, size=64, randomisation="default", progress=False)
    capsys.readouterr()
    assert main(["dataset", "check", str(out), "--quiet"]) == 0
    report = capsys.readouterr().out
    assert "frames with no masks: 4 of 4" in report and "rendered with randomisation: default (4 frames)" in report


def test_cli_collects_the_shifted_domain_with_the_same_classes(tmp_path, capsys):
    out = tmp_path / "shifted"
    assert main(["collect", "--scenes", "1", "--size", "64", "--domain", "shifted", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["dataset", "check", str(out), "--quiet"]) == 0
    report = capsys.readouterr().out
    assert "rendered with randomisation: shifted (4 frames)" in report and "classes present" in report
    assert main(["collect", "--scenes", "1", "--sim", "ai2thor", "--randomisation", "strong",
                 "--out", str(tmp_path / "thor")]) == 2


def test_randomised_collection_is_the_same_with_one_or_two_workers(tmp_path):
    common = {"scenes": 2, "seed": 9, "size": 48, "min_area": 5, "randomisation": "strong", "progress": False}
    collect_dataset("pybullet", out=tmp_path / "w1", workers=1, **common)
    collect_dataset("pybullet", out=tmp_path / "w2", workers=2, **common)
    for sub in ("images", "depth"):
        one, two = sorted((tmp_path / "w1" / sub).iterdir()), sorted((tmp_path / "w2" / sub).iterdir())
        assert [p.name for p in one] == [p.name for p in two]
        assert all(a.read_bytes() == b.read_bytes() for a, b in zip(one, two, strict=True))
    annotations = [(tmp_path / w / "annotations.json").read_text() for w in ("w1", "w2")]
    assert annotations[0].split('"licenses"')[1] == annotations[1].split('"licenses"')[1]  # all but the date
