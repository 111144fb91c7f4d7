"""The one point-decoding path (`SaomModel.decode_points`, `DecoderOutput.keep_best`) and the one
Instance builder: same numbers as the code they replaced, on tiny random models."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.utils.amg import batched_mask_to_box, calculate_stability_score

from saom_core.data.classes import ClassList
from saom_core.infer.generator import GeneratorConfig
from saom_core.infer.segmenter import SaomSegmenter
from saom_core.infer.types import build_instances
from saom_core.model.architectures import get_config
from saom_core.model.saom import DecoderOutput, SaomModel, build_model

CLASSES = ClassList.from_dict({"name": "t", "classes": ["A", "B", "C"]})
HEADS = {
    "iou_token": {},
    "mask_pool": {"head_input": "mask_pool"},
    "crop": {"head_input": "mask_pool", "crop_classifier": True},
    "vanilla": None,
}


def random_model(head: str) -> SaomModel:
    """A tiny model with every weight matrix random, so its masks, IoUs and classes all differ."""
    torch.manual_seed(0)
    kwargs = HEADS[head]
    model = build_model(get_config("test"), None if kwargs is None else CLASSES, **(kwargs or {})).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=0.3)
    return model


def frame(height: int, width: int, seed: int) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (1, height, width, 3), dtype=np.uint8))


@torch.no_grad()
def test_decode_points_maps_each_point_with_its_own_frames_size():
    model = random_model("mask_pool")
    sizes = [(40, 56), (64, 48)]  # landscape and portrait: different input scales
    prepared = torch.cat([model.prepare_images(frame(h, w, i)) for i, (h, w) in enumerate(sizes)])
    embeddings = model.encode(prepared)
    points = torch.tensor([[5.5, 7.5], [30.0, 20.0], [40.2, 60.1], [3.0, 1.0]])
    image_index = torch.tensor([0, 0, 1, 1])
    coords = torch.cat([model.points_to_input(points[:2], *sizes[0]), model.points_to_input(points[2:], *sizes[1])])
    expected = model.decode(embeddings, coords[:, None, :], torch.ones(4, 1, dtype=torch.int), image_index=image_index)
    got = model.decode_points(embeddings, points, sizes, image_index)
    for field in ("low_res_logits", "iou_pred", "class_logits"):
        assert torch.equal(getattr(got, field), getattr(expected, field)), field
    with pytest.raises(ValueError, match="image_index"):
        model.decode_points(embeddings, points, sizes)


def test_keep_best_takes_each_prompts_highest_predicted_iou_with_its_class():
    logits = torch.arange(4 * 3, dtype=torch.float).view(4, 3, 1, 1).expand(4, 3, 2, 2)
    iou = torch.tensor([[0.1, 0.9, 0.2], [0.8, 0.1, 0.3], [0.1, 0.2, 0.7], [0.5, 0.5, 0.1]])
    class_logits = torch.randn(4, 3, 4)
    kept = DecoderOutput(logits, iou, class_logits).keep_best()
    assert kept.index.tolist() == [1, 0, 2, 0]  # a tie keeps the first
    assert kept.logits[:, 0, 0].tolist() == [1.0, 3.0, 8.0, 9.0]
    assert kept.iou_pred.tolist() == pytest.approx([0.9, 0.8, 0.7, 0.5])
    assert torch.equal(kept.class_logits, class_logits[torch.arange(4), kept.index])
    assert DecoderOutput(logits, iou, None).keep_best().class_logits is None


def reference_prompted(model: SaomModel, image: np.ndarray, boxes: np.ndarray, points: np.ndarray) -> list[tuple]:
    """Prompted segmentation as it was written before `decode_points`/`keep_best` (full-size frame, float32)."""
    height, width = image.shape[:2]
    prepared = model.prepare_images(torch.from_numpy(image)[None])
    embedding = model.encode(prepared)
    box_in = model.points_to_input(torch.as_tensor(boxes).view(-1, 2, 2), height, width).view(-1, 4)
    pts = torch.as_tensor(points)
    outs = [
        (model.decode(embedding, boxes=box_in, multimask_output=False), [None] * len(boxes)),
        (model.decode(embedding, model.points_to_input(pts, height, width)[:, None, :],
                      torch.ones(len(pts), 1, dtype=torch.int)), [tuple(map(float, p)) for p in points]),
    ]
    rows_out = []
    for out, prompts in outs:
        best = out.iou_pred.float().argmax(1)
        rows = torch.arange(len(best))
        logits = out.low_res_logits[rows, best].float()
        masks = model.logits_to_frame(logits[:, None], height, width)[:, 0] > 0
        stability = calculate_stability_score(logits, 0.0, 1.0)
        boxes_np = batched_mask_to_box(masks).float().numpy() + np.array([0, 0, 1, 1])
        if model.crop_classifier is not None:
            class_logits = model.classify_masks(prepared, logits.sigmoid())
        else:
            class_logits = out.class_logits[rows, best] if out.class_logits is not None else None
        if class_logits is not None:
            score, cid = class_logits.float().softmax(-1).max(-1)
        else:
            cid, score = torch.ones_like(best), torch.ones_like(best, dtype=torch.float)
        for k in range(len(best)):
            box = tuple(float(v) for v in boxes_np[k]) if masks[k].any() else (0.0, 0.0, 0.0, 0.0)
            rows_out.append((masks[k].numpy(), box, int(cid[k]), float(score[k]),
                             float(out.iou_pred[k, best[k]]), float(stability[k]), prompts[k]))
    return rows_out


@pytest.mark.parametrize("head", list(HEADS))
@torch.no_grad()
def test_prompted_segmentation_keeps_the_numbers_of_the_code_it_replaced(head):
    model = random_model(head)
    image = np.random.default_rng(1).integers(0, 256, (40, 56, 3), dtype=np.uint8)
    boxes = np.array([[2, 3, 30, 20], [10, 10, 50, 38]], dtype=np.float32)
    points = np.array([[5.5, 7.5], [30, 20], [50.2, 33.1]], dtype=np.float32)
    expected = reference_prompted(model, image, boxes, points)
    got = SaomSegmenter(model, GeneratorConfig(points_per_side=4)).segment_prompts(image, boxes, points).instances
    assert len(got) == len(expected) == 5
    assert len({inst.predicted_iou for inst in got}) == 5, "the random model gives every prompt its own mask"
    for inst, (mask, box, cid, score, iou, stability, point) in zip(got, expected, strict=True):
        assert np.array_equal(inst.mask, mask)
        assert (inst.box_xyxy, inst.class_id, inst.class_score, inst.predicted_iou, inst.stability, inst.point) == (
            box, cid, score, iou, stability, point)


def test_build_instances_boxes_names_and_points():
    masks = np.zeros((3, 6, 8), dtype=bool)
    masks[0, 1:3, 2:5] = True
    masks[2, 5, 7] = True
    boxes = batched_mask_to_box(torch.from_numpy(masks)).numpy()
    instances = build_instances(
        masks, boxes, np.array([1, 0, 2]), np.array([0.5, 0.25, 1.0], dtype=np.float32),
        np.array([0.9, 0.8, 0.7]), np.array([1.0, 0.5, 0.0]), ["background", "A", "B"],
        [np.array([2.5, 1.5], dtype=np.float32), None, (7.0, 5.0)],
    )
    assert [i.box_xyxy for i in instances] == [(2.0, 1.0, 5.0, 3.0), (0.0, 0.0, 0.0, 0.0), (7.0, 5.0, 8.0, 6.0)]
    assert [i.class_name for i in instances] == ["A", "background", "B"]
    assert [i.point for i in instances] == [(2.5, 1.5), None, (7.0, 5.0)]
    assert [i.score for i in instances] == pytest.approx([0.45, 0.2, 0.7])
    assert all(isinstance(i.point[0], float) for i in instances if i.point is not None)
    assert build_instances(masks[:1], boxes[:1], [1], [1.0], [1.0], [1.0], ["background", "A"])[0].point is None
