"""Training throughput: SAOM's trainer against two per-mask loops, same model, data and machine.

The naive loop is what a straightforward reimplementation of the paper does: for every mask,
re-run the (frozen) image encoder, decode that one prompt, step the optimizer. The encode-once
loop encodes each frame once (in memory, no cache) and then steps once per mask, so
naive -> encode-once is what not re-encoding per mask gains and encode-once -> SAOM what batching
(and the fp16 cache) add. SAOM's trainer encodes each frame once (fp16 embedding cache on disk,
reused across epochs and runs) and decodes every mask of a batch in one call. Prints masks/s of
all three, the first-epoch ratio with SAOM's one-off cache fill counted, and, last,
`speedup: <SAOM / naive, steady state>`.

    python bench/train_throughput.py                       # vit_b shapes (random weights), CPU
    python bench/train_throughput.py --config vit_b --device cuda
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from saom_core.data.collect import collect_dataset
from saom_core.device import resolve_device
from saom_core.train.losses import saom_loss
from saom_core.train.prompts import Geometry, low_res_targets
from saom_core.train.recipe import load_train_config
from saom_core.train.trainer import Trainer


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def per_mask_masks_per_second(trainer: Trainer, masks: int, encode_once: bool, warmup: int = 1) -> float:
    """One mask per optimizer step; the encoder runs for every mask (naive) or once per frame
    (`encode_once`, kept in memory). The first `warmup` masks are run but not timed."""
    model, device, cfg = trainer.model, trainer.device, trainer.cfg
    rng = np.random.default_rng(0)
    done, elapsed, index = -warmup, 0.0, 0
    while done < masks:
        frame = trainer.frames[index % len(trainer.frames)]
        index += 1
        h, w = frame.image.shape[:2]
        embedding = None
        for k in range(len(frame.masks)):
            if done >= masks:
                break
            sync(device)
            start = time.perf_counter()
            if embedding is None or not encode_once:
                image = torch.from_numpy(frame.image)[None].to(device)
                with torch.no_grad():
                    embedding = model.encode(model.prepare_images(image))
            ys, xs = np.nonzero(frame.masks[k].numpy())
            i = rng.integers(len(xs))
            pixel = torch.tensor([[[xs[i] + 0.5, ys[i] + 0.5]]], dtype=torch.float32, device=device)
            point = model.points_to_input(pixel, h, w)
            amp = trainer.amp_dtype
            with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
                out = model.decode(embedding, point, torch.ones(1, 1, dtype=torch.int, device=device))
                geo = Geometry(model.input_size(h, w), model.config.image_size, model.config.low_res_size)
                target = low_res_targets(frame.masks[k : k + 1].to(device), geo)
                positive = torch.ones(1, dtype=torch.bool, device=device)
                terms = saom_loss(out, target, frame.class_ids[k : k + 1].to(device), positive, cfg.loss)
            trainer.optimizer.zero_grad(set_to_none=True)
            terms.total.backward()
            trainer.optimizer.step()
            sync(device)
            if done >= 0:
                elapsed += time.perf_counter() - start
            done += 1
    return done / elapsed


def saom_masks_per_second(trainer: Trainer, steps: int) -> tuple[float, float, float]:
    """Steady-state masks/s of Trainer.train_step (cache filled first), the cache fill time, and
    the mean seconds of one step."""
    start = time.perf_counter()
    for frame in trainer.frames:
        if trainer.cache is not None and trainer.cache.get(frame.key) is None:
            trainer.cache.put(frame.key, frame.image, trainer.device)
    sync(trainer.device)
    fill = time.perf_counter() - start
    batch = trainer.cfg.train.frames_per_step
    trainer.train_step([trainer.frames[i % len(trainer.frames)] for i in range(batch)])  # warm-up
    masks, elapsed = 0, 0.0
    for step in range(steps):
        frames = [trainer.frames[(step * batch + i) % len(trainer.frames)] for i in range(batch)]
        trained_before = trainer._throughput[0]
        sync(trainer.device)
        t = time.perf_counter()
        trainer.train_step(frames)
        sync(trainer.device)
        elapsed += time.perf_counter() - t
        masks += trainer._throughput[0] - trained_before  # masks that got a prompt (reachable ones)
    return masks / elapsed, fill, elapsed / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="vit_b", help="model config: vit_b (default), vit_l, vit_h, tiny, test")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data", type=Path, default=None, help="dataset (default: collect 4 PyBullet scenes)")
    parser.add_argument("--naive-masks", type=int, default=8,
                        help="masks timed in each per-mask loop (after 1 untimed warm-up mask)")
    parser.add_argument("--steps", type=int, default=4, help="batches timed in SAOM's trainer")
    parser.add_argument("--frames-per-step", type=int, default=8)
    args = parser.parse_args()
    device = resolve_device(args.device, "--device")

    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = Path(tmp) / "data"
            collect_dataset("pybullet", scenes=4, out=data, seed=0, progress=False)
        frozen = args.config != "tiny"
        cfg = load_train_config(
            None,
            [
                f"model.config={args.config}", f"data.root={data}", f"train.device={device}",
                f"train.frames_per_step={args.frames_per_step}", f"train.cache_dir={tmp}/cache",
                "train.max_steps=1000", f"train.cache_embeddings={'true' if frozen else 'false'}",
                "data.negatives_per_frame=0", "data.hflip=false",
                *([] if frozen else ["train.trainable=[all]"]),
            ],
        )
        trainer = Trainer(cfg, Path(tmp) / "run", progress=False)
        saom_rate, fill, step_s = saom_masks_per_second(trainer, args.steps)
        once_rate = per_mask_masks_per_second(trainer, args.naive_masks, encode_once=True)
        naive_rate = per_mask_masks_per_second(trainer, args.naive_masks, encode_once=False)
        frames = len(trainer.frames)
        epoch_masks = sum(len(f.masks) for f in trainer.frames)

    if device.type == "cuda":
        machine = torch.cuda.get_device_name(device)
    else:
        machine = f"CPU {platform.machine()}, {torch.get_num_threads()} threads"
    encoder = "frozen" if frozen else "trained"
    print(f"model: {args.config} (random weights; encoder {encoder}), {args.frames_per_step} frames/step")
    print(f"machine: {machine}; torch {torch.__version__}; amp {trainer.amp_dtype}")
    print(f"{'trainer':<52} {'masks/s':>9}")
    print(f"{'naive: encoder per mask, one mask per step':<52} {naive_rate:>9.2f}")
    print(f"{'encode-once: encoder per frame, one mask per step':<52} {once_rate:>9.2f}")
    print(f"{'SAOM: cached embeddings, batched decoder':<52} {saom_rate:>9.2f}")
    print(f"not re-encoding per mask: {once_rate / naive_rate:.1f}x; "
          f"batching + cache on top: {saom_rate / once_rate:.1f}x")
    if trainer.cache is not None:
        print(f"one-off cache fill: {fill:.1f} s for {frames} frames "
              f"({frames / fill:.2f} frames/s; reused by every later epoch and run)")
    # One epoch of these frames (every mask once): the per-mask loops step once per mask, SAOM
    # steps once per batch of frames and pays its cache fill in the first epoch.
    saom_epoch = fill + step_s * frames / args.frames_per_step
    print(f"first epoch ({frames} frames, {epoch_masks} masks), cache fill included: "
          f"naive {epoch_masks / naive_rate:.1f} s, encode-once {epoch_masks / once_rate:.1f} s, "
          f"SAOM {saom_epoch:.1f} s: epoch speedup {epoch_masks / naive_rate / saom_epoch:.1f}")
    print(f"speedup: {saom_rate / naive_rate:.1f}")


if __name__ == "__main__":
    main()
