"""Everything-of-interest generator: labels stay with their masks, filters, the slow path."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from saom_core import precision
from saom_core.data.classes import ClassList
from saom_core.errors import ConfigError, ImageError
from saom_core.infer.generator import EverythingGenerator, GeneratorConfig, suppress_same_class_overlaps
from saom_core.infer.segmenter import SaomSegmenter
from saom_core.infer.types import Instance
from saom_core.model.architectures import get_config
from saom_core.model.saom import DecoderOutput, build_model

CLASSES = ClassList.from_dict({"name": "t", "classes": ["A", "B", "C", "D"]})
H, W = 48, 64


def expected_class(x: float) -> int:
    """The class the fake decoder gives a prompt at frame x: 1..4 by vertical band."""
    return int(x // (W / 4)) + 1


@pytest.fixture
def stamped_model(monkeypatch):
    """A model whose decoder answers prompt p with a disk around p, classed by p's band.

    Every prompt keeps a different one of its 3 masks (by predicted IoU) and the other two are
    wrong, so pairing a class or a mask with the wrong prompt or the wrong mask index shows.
    """
    model = build_model(get_config("test"), CLASSES).eval()
    side = model.config.low_res_size
    new_h, new_w = model.input_size(H, W)

    def decode(embeddings, point_coords=None, point_labels=None, boxes=None, image_index=None, multimask_output=True):
        p = point_coords.shape[0]
        xy = point_coords[:, 0, :]  # model input coordinates
        ys, xs = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
        scale = side / model.config.image_size
        dist = ((xs[None] - xy[:, 0, None, None] * scale) ** 2 + (ys[None] - xy[:, 1, None, None] * scale) ** 2).sqrt()
        disk = 8.0 - dist  # radius 8 low-res px
        logits = torch.full((p, 3, side, side), -10.0)
        best = torch.arange(p) % 3
        logits[torch.arange(p), best] = disk
        iou = torch.full((p, 3), 0.1)
        iou[torch.arange(p), best] = 0.9
        frame_x = xy[:, 0] * W / new_w
        cls = torch.tensor([expected_class(float(x)) for x in frame_x])
        class_logits = torch.zeros(p, 3, len(CLASSES.classes) + 1)
        class_logits[torch.arange(p), best, cls] = 10.0  # only the kept mask carries the right class
        return DecoderOutput(logits, iou, class_logits)

    monkeypatch.setattr(model, "decode", decode)
    return model


def test_every_mask_carries_its_own_prompts_class(stamped_model):
    generator = EverythingGenerator(  # every prompt decoded (no coarse-to-fine): each keeps its own disk
        stamped_model,
        GeneratorConfig(
            points_per_side=4,
            pred_iou_thresh=0.5,
            stability_score_thresh=0.0,
            box_nms_thresh=0.99,
            min_mask_region_area=0,
            coarse_to_fine=False,
        ),
    )
    seg = generator.generate(np.zeros((H, W, 3), np.uint8))
    assert len(seg.instances) == 16
    for inst in seg.instances:
        x, y = inst.point
        assert inst.mask[int(y), int(x)], "the mask is the one of its own prompt"
        assert inst.class_id == expected_class(x), f"prompt at x={x} got class {inst.class_id}"
        assert inst.class_name == CLASSES.name_of(inst.class_id)
        assert inst.predicted_iou == pytest.approx(0.9)
        assert inst.class_score > 0.99


def test_keep_classes_and_background(stamped_model):
    config = GeneratorConfig(
        points_per_side=4,
        pred_iou_thresh=0.5,
        stability_score_thresh=0.0,
        box_nms_thresh=0.99,
        min_mask_region_area=0,
        keep_classes=["B"],
        coarse_to_fine=False,
    )
    seg = EverythingGenerator(stamped_model, config).generate(np.zeros((H, W, 3), np.uint8))
    assert {i.class_name for i in seg.instances} == {"B"} and len(seg.instances) == 4
    with pytest.raises(ConfigError, match="unknown classes \\['Sofa'\\]"):
        EverythingGenerator(stamped_model, GeneratorConfig(keep_classes=["Sofa"]))


def test_background_class_is_dropped_unless_kept():
    model = build_model(get_config("test"), CLASSES).eval()
    with torch.no_grad():
        model.classifier.linear.weight.zero_()
        model.classifier.linear.bias.copy_(torch.tensor([5.0, 0, 0, 0, 0]))  # everything says background
    loose = dict(points_per_side=4, pred_iou_thresh=-1.0, stability_score_thresh=0.0, min_mask_region_area=0)
    frame = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    assert EverythingGenerator(model, GeneratorConfig(**loose)).generate(frame).instances == []
    kept = EverythingGenerator(model, GeneratorConfig(**loose, keep_background=True)).generate(frame)
    assert kept.instances and all(i.class_id == 0 and i.class_name == "background" for i in kept.instances)


def test_label_image_numbers_instances_best_first(stamped_model):
    generator = EverythingGenerator(
        stamped_model,
        GeneratorConfig(
            points_per_side=4,
            pred_iou_thresh=0.5,
            stability_score_thresh=0.0,
            box_nms_thresh=0.99,
            min_mask_region_area=0,
        ),
    )
    seg = generator.generate(np.zeros((H, W, 3), np.uint8))
    labels = seg.label_image()
    assert labels.dtype == np.uint16 and labels.shape == (H, W)
    for k, inst in enumerate(seg.instances, start=1):
        x, y = inst.point
        assert labels[int(y), int(x)] == k or seg.instances[labels[int(y), int(x)] - 1].score >= inst.score


def test_segmenter_rejects_bad_frames_and_scales_large_ones(stamped_model):
    segmenter = SaomSegmenter(
        stamped_model,
        GeneratorConfig(points_per_side=4, pred_iou_thresh=0.5, stability_score_thresh=0.0, min_mask_region_area=0),
        max_input_size=32,
    )
    for bad, message in (
        (np.zeros((10, 10), np.uint8), "RGB"),
        (np.zeros((10, 10, 3), np.float32), "uint8"),
        (np.zeros((0, 5, 3), np.uint8), "empty"),
    ):
        with pytest.raises(ImageError, match=message):
            segmenter.segment(bad)
    seg = segmenter.segment(np.zeros((H * 2, W * 2, 3), np.uint8))
    assert (seg.height, seg.width) == (H * 2, W * 2)
    assert all(i.mask.shape == (H * 2, W * 2) for i in seg.instances)
    prompted = segmenter.segment_prompts(
        np.zeros((H * 2, W * 2, 3), np.uint8), points=np.array([[10.0, 10.0], [100.0, 60.0]])
    )
    assert [i.class_id for i in prompted.instances] == [expected_class(5.0), expected_class(50.0)]


def test_compiled_decoder_gives_the_same_instances():
    """compile=True swaps in torch.compile(model.decode): a speed option, never a different answer."""
    torch.manual_seed(0)
    model = build_model(get_config("test"), CLASSES).eval()
    loose = dict(
        points_per_side=4,
        pred_iou_thresh=-1.0,
        stability_score_thresh=0.0,
        min_mask_region_area=0,
        keep_background=True,
    )
    frame = np.random.default_rng(1).integers(0, 255, (H, W, 3), dtype=np.uint8)
    eager = EverythingGenerator(model, GeneratorConfig(**loose)).generate(frame)
    compiled = EverythingGenerator(model, GeneratorConfig(**loose, compile=True)).generate(frame)
    assert eager.instances and len(compiled.instances) == len(eager.instances)
    for a, b in zip(eager.instances, compiled.instances, strict=True):
        assert a.class_id == b.class_id and abs(a.score - b.score) < 1e-4
        assert (a.mask != b.mask).mean() < 0.01


def test_half_runs_the_real_decoder_in_bf16_on_cpu(monkeypatch):
    """`half` on a CPU where bf16 measured faster means bf16 autocast, not an error or a silent
    no-op: the real (random) model's decoder computes in bf16 and its masks come back at frame size."""
    monkeypatch.setattr(precision, "cpu_bf16_pays", lambda workload: True)
    torch.manual_seed(0)
    model = build_model(get_config("test"), CLASSES).eval()
    keep_all = dict(
        points_per_side=4, pred_iou_thresh=0.0, stability_score_thresh=0.0, min_mask_region_area=0, keep_background=True
    )
    half = SaomSegmenter(model, GeneratorConfig(**keep_all), half=True)
    assert half.runtime.amp_dtype == torch.bfloat16
    seen = []
    decode = model.decode

    def recording_decode(*args, **kwargs):
        out = decode(*args, **kwargs)
        seen.append(out.low_res_logits.dtype)
        return out

    model.decode = recording_decode
    image = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
    seg = half.segment(image)
    assert seen and set(seen) == {torch.bfloat16}, seen
    assert seg.instances and all(i.mask.shape == (H, W) for i in seg.instances)
    model.decode = decode
    full = SaomSegmenter(model, GeneratorConfig(**keep_all)).segment(image)
    assert len(full.instances) > 0
    best_half = max(i.predicted_iou for i in seg.instances)
    assert abs(best_half - max(i.predicted_iou for i in full.instances)) < 0.05


def test_coarse_to_fine_finds_the_same_whole_objects_with_fewer_prompts(monkeypatch):
    """A SAOM-like decoder: a prompt inside an object answers with that whole object and its class,
    elsewhere with background. Skipping points inside found objects must not lose an object,
    including a small one that only fine grid points hit."""
    model = build_model(get_config("test"), CLASSES).eval()
    side = model.config.low_res_size
    new_h, new_w = model.input_size(H, W)
    boxes = [(2, 2, 30, 26, 1), (36, 8, 62, 44, 3), (20, 33, 26, 39, 2)]  # x0, y0, x1, y1 in frame pixels, class
    prompted = []

    def decode(embeddings, point_coords=None, point_labels=None, boxes_=None, image_index=None, multimask_output=True):
        xy = point_coords[:, 0, :] * torch.tensor([W / new_w, H / new_h])  # frame pixels
        prompted.append(len(xy))
        ys, xs = torch.meshgrid(torch.arange(side) + 0.5, torch.arange(side) + 0.5, indexing="ij")
        fx, fy = xs * new_w / side * W / new_w, ys * new_h / side * H / new_h  # low-res pixel centres in frame pixels
        logits = torch.full((len(xy), 3, side, side), -10.0)
        class_logits = torch.zeros(len(xy), 3, len(CLASSES.classes) + 1)
        class_logits[:, :, 0] = 10.0
        for k, (x, y) in enumerate(xy.tolist()):
            for x0, y0, x1, y1, cls in boxes:
                if x0 <= x < x1 and y0 <= y < y1:
                    inside = (fx >= x0) & (fx < x1) & (fy >= y0) & (fy < y1)
                    logits[k, :, inside] = 10.0
                    class_logits[k, :, 0], class_logits[k, :, cls] = 0.0, 10.0
        return DecoderOutput(logits, torch.full((len(xy), 3), 0.9), class_logits)

    monkeypatch.setattr(model, "decode", decode)
    settings = dict(points_per_side=16, pred_iou_thresh=0.5, stability_score_thresh=0.5, min_mask_region_area=0)
    frame = np.zeros((H, W, 3), np.uint8)
    full = EverythingGenerator(model, GeneratorConfig(**settings, coarse_to_fine=False)).generate(frame)
    full_prompts, prompted[:] = sum(prompted), []
    fast = EverythingGenerator(model, GeneratorConfig(**settings, coarse_to_fine=True)).generate(frame)
    assert full_prompts == 256 and sum(prompted) < full_prompts * 0.75, sum(prompted)
    assert sorted(i.class_id for i in fast.instances) == sorted(i.class_id for i in full.instances) == [1, 2, 3]
    for a in full.instances:
        b = next(i for i in fast.instances if i.class_id == a.class_id)
        assert np.array_equal(a.mask, b.mask)


def test_object_prior_prompts_only_points_the_class_map_calls_objects():
    """A mask_pool head whose per-cell class map calls the left half of the frame background and the
    right half class B: only right-half points are prompted, and each prompt is the grid point it
    was (not shifted to another cell); at 0 every point is prompted."""
    model = build_model(get_config("test"), CLASSES, head_input="mask_pool").eval()
    side = model.config.embedding_size
    embedding = torch.zeros(1, model.config.prompt_embed_dim, side, side)
    embedding[0, 0, :, side // 2 :] = 1.0  # feature 0 marks the right half's cells
    with torch.no_grad():
        model.classifier.linear.weight.zero_()
        model.classifier.linear.bias.copy_(torch.tensor([4.0, 0, 0, 0, 0]))  # background everywhere ...
        model.classifier.linear.weight[2, 0] = 8.0  # ... but B where feature 0 is set
    prompted = []

    def decode(embeddings, point_coords=None, point_labels=None, boxes=None, image_index=None, multimask_output=True):
        prompted.append(point_coords[:, 0, :].clone())
        n = len(point_coords)
        low = model.config.low_res_size
        return DecoderOutput(torch.full((n, 3, low, low), -10.0),
                             torch.full((n, 3), 0.9), torch.zeros(n, 3, len(CLASSES.classes) + 1))

    model.decode = decode
    size = model.config.image_size
    frame = np.zeros((size, size, 3), np.uint8)  # square, so input coordinates are frame pixels
    settings = dict(points_per_side=8, coarse_to_fine=False)
    EverythingGenerator(model, GeneratorConfig(**settings, prompt_min_object_prob=0.5)).generate(frame, embedding)
    points = torch.cat(prompted)
    assert len(points) == 32 and bool((points[:, 0] > size / 2).all()), points
    prompted.clear()
    EverythingGenerator(model, GeneratorConfig(**settings, prompt_min_object_prob=0.0)).generate(frame, embedding)
    assert len(torch.cat(prompted)) == 64
    prompted.clear()  # keeping background prompts every point: the class map cannot skip what is kept
    EverythingGenerator(
        model, GeneratorConfig(**settings, prompt_min_object_prob=0.5, keep_background=True)
    ).generate(frame, embedding)
    assert len(torch.cat(prompted)) == 64


def _instance(class_id: int, score: float, y0: int, y1: int, x0: int, x1: int) -> Instance:
    mask = np.zeros((40, 40), bool)
    mask[y0:y1, x0:x1] = True
    return Instance(mask=mask, box_xyxy=(x0, y0, x1, y1), class_id=class_id, class_name=f"c{class_id}",
                    class_score=1.0, predicted_iou=score, stability=1.0)


def test_same_class_overlaps_drop_parts_labelled_as_their_object():
    whole = _instance(1, 0.9, 0, 30, 0, 30)  # an object
    part = _instance(1, 0.8, 0, 10, 0, 10)  # a part of it, same label: wholly inside
    other_class = _instance(2, 0.7, 5, 15, 5, 15)  # inside too, but another class: kept
    neighbour = _instance(1, 0.6, 20, 40, 20, 40)  # same class, 100 of its 400 pixels in `whole`: kept
    ranked = [whole, part, other_class, neighbour]
    assert suppress_same_class_overlaps(ranked, 0.7) == [whole, other_class, neighbour]
    assert suppress_same_class_overlaps(ranked, 0.2) == [whole, other_class]  # 0.25 of the neighbour > 0.2
    assert suppress_same_class_overlaps(ranked, 1.0) == ranked  # off
    # the better one is kept whichever is larger: a part scored above its object removes the object
    assert suppress_same_class_overlaps([part, whole], 0.7) == [part]
