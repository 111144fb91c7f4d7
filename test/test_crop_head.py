"""The crop classifier: crop boxes, frame routing, learning, and its use by every caller."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from saom_core.data.classes import ClassList
from saom_core.eval.point_eval import evaluate_points
from saom_core.infer.generator import EverythingGenerator, GeneratorConfig
from saom_core.infer.segmenter import SaomSegmenter
from saom_core.model.architectures import get_config
from saom_core.model.checkpoint import load_model, save_checkpoint
from saom_core.model.crop_head import CONTEXT, MaskCropClassifier, square_boxes
from saom_core.model.saom import build_model
from saom_core.train.forward import crop_targets

CLASSES = ClassList.from_dict({"name": "shapes", "classes": ["Square", "Disc"]})


def test_square_box_is_centred_on_the_mask_with_context():
    masks = torch.zeros(2, 16, 16)
    masks[0, 2:6, 4:12] = 1.0  # 8 wide, 4 high: x 4..12, y 2..6
    boxes = square_boxes(masks, scale=4.0)
    half = 8 / 2 * CONTEXT + 0.5
    expected = torch.tensor([8 - half, 4 - half, 8 + half, 4 + half]) * 4
    assert torch.allclose(boxes[0], expected)
    assert torch.allclose(
        boxes[1],
        torch.tensor([8 - 8 * CONTEXT - 0.5, 8 - 8 * CONTEXT - 0.5, 8 + 8 * CONTEXT + 0.5, 8 + 8 * CONTEXT + 0.5]) * 4,
    ), "an empty mask gets the whole area"


def test_each_mask_is_cropped_from_its_own_frame():
    head = MaskCropClassifier(3).eval()
    images = torch.randn(2, 3, 64, 64)
    masks = torch.zeros(2, 16, 16)
    masks[:, 4:8, 4:8] = 1.0
    index = torch.tensor([0, 1])
    with torch.no_grad():
        before = head(images, masks, index)
        images[0] += 5.0  # only frame 0 changes
        after = head(images, masks, index)
    assert before.shape == (2, 3)
    assert not torch.allclose(before[0], after[0]) and torch.allclose(before[1], after[1])
    assert head(images, masks[:0], index[:0]).shape == (0, 3)


def shapes_frame(rng: np.random.Generator, side: int = 64) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(1, 3, side, side) image with one square and one disc of random colours, their low-res masks, labels."""
    image = torch.full((3, side, side), float(rng.uniform(-1, 1)))
    ys, xs = torch.meshgrid(torch.arange(side), torch.arange(side), indexing="ij")
    masks = []
    for label, cx in ((1, side // 4), (2, 3 * side // 4)):
        cy, r = int(rng.integers(12, side - 12)), int(rng.integers(6, 10))
        if label == 1:
            mask = ((xs - cx).abs() <= r) & ((ys - cy).abs() <= r)
        else:
            mask = (xs - cx) ** 2 + (ys - cy) ** 2 <= (r + 2) ** 2
        image[:, mask] = torch.as_tensor(rng.uniform(-2, 2, 3), dtype=torch.float32)[:, None]
        masks.append(F.avg_pool2d(mask[None, None].float(), 4)[0, 0])
    return image[None], torch.stack(masks), torch.tensor([1, 2])


def test_the_head_learns_shape_not_colour():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    head = MaskCropClassifier(3)
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    for _ in range(150):
        frames = [shapes_frame(rng) for _ in range(4)]
        images = torch.cat([f[0] for f in frames])
        masks = torch.cat([f[1] for f in frames])
        labels = torch.cat([f[2] for f in frames])
        index = torch.arange(4).repeat_interleave(2)
        loss = F.cross_entropy(head(images, masks, index), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    head.eval()
    test = [shapes_frame(np.random.default_rng(100 + i)) for i in range(20)]
    with torch.no_grad():
        correct = sum(int((head(img, m).argmax(1) == y).sum()) for img, m, y in test)
    assert correct / 40 >= 0.9


def crop_model(decoder_class: int = 1, crop_class: int = 2) -> torch.nn.Module:
    """A test-size model whose decoder head says `decoder_class` and crop classifier `crop_class` for everything."""
    model = build_model(get_config("test"), CLASSES, "mask_pool", crop_classifier=True).eval()
    for head, class_id in ((model.classifier, decoder_class), (model.crop_classifier, crop_class)):
        with torch.no_grad():
            head.linear.weight.zero_()
            head.linear.bias.fill_(0.0)
            head.linear.bias[class_id] = 5.0
    return model


def test_crop_classifier_travels_with_the_checkpoint(tmp_path):
    model = crop_model()
    loaded = load_model(save_checkpoint(tmp_path / "crop.pt", model))
    assert loaded.crop_classifier is not None and loaded.classifier.head_input == "mask_pool"
    for (k1, v1), (k2, v2) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k1 == k2 and torch.equal(v1, v2)
    plain = build_model(get_config("test"), CLASSES)
    assert load_model(save_checkpoint(tmp_path / "plain.pt", plain)).crop_classifier is None
    with pytest.raises(ValueError, match="crop_classifier"):
        build_model(get_config("test"), CLASSES).classify_masks(torch.zeros(1, 3, 64, 64), torch.zeros(1, 16, 16))


def test_generator_labels_the_kept_masks_with_the_crop_head():
    frame = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    loose = dict(points_per_side=4, pred_iou_thresh=-1.0, stability_score_thresh=0.0, min_mask_region_area=0)
    model = crop_model(decoder_class=1, crop_class=2)
    seg = EverythingGenerator(model, GeneratorConfig(**loose)).generate(frame)
    assert seg.instances and {i.class_name for i in seg.instances} == {"Disc"}, (
        "the crop classifier's label is reported"
    )
    assert all(i.class_score > 0.9 for i in seg.instances)
    assert EverythingGenerator(model, GeneratorConfig(**loose, keep_classes=["Disc"])).generate(frame).instances
    assert EverythingGenerator(model, GeneratorConfig(**loose, keep_classes=["Square"])).generate(frame).instances == []
    dropped_by_crop = crop_model(decoder_class=1, crop_class=0)
    assert EverythingGenerator(dropped_by_crop, GeneratorConfig(**loose)).generate(frame).instances == [], (
        "background is dropped"
    )


def test_prompted_segmentation_and_point_eval_use_the_crop_head(pybullet_dataset):
    model = crop_model(decoder_class=2, crop_class=1)
    seg = SaomSegmenter(model, GeneratorConfig()).segment_prompts(
        np.zeros((48, 64, 3), np.uint8), points=np.array([[20.0, 20.0]])
    )
    assert [i.class_name for i in seg.instances] == ["Square"]

    from saom_core.data.reader import SaomDataset

    dataset = SaomDataset(pybullet_dataset, split="train")
    untrained = build_model(get_config("test"), dataset.classes, crop_classifier=True)
    result = evaluate_points({"m": untrained}, dataset, max_frames=2, progress=False)["m"]
    assert result.objects > 0 and result.instance_class_accuracy is not None


def test_background_points_whose_masks_lie_on_objects_do_not_teach_the_crop_classifier():
    side = 8
    true_mask = torch.zeros(1, side, side)
    true_mask[0, :4, :4] = 1.0  # the frame's one object: top-left quarter
    logits = torch.full((3, side, side), -5.0)  # the kept mask of each prompt
    logits[:2, :4, :4] = 5.0  # object prompt and first background point: a mask on the object
    logits[2, 4:, 4:] = 5.0  # second background point: a mask on the floor
    positive = torch.tensor([True, False, False])
    targets = crop_targets(
        logits, positive, true_mask, torch.tensor([2, 0, 0]), torch.zeros(3, dtype=torch.long), frames=1
    )
    assert targets.tolist() == [2, -100, 0]
