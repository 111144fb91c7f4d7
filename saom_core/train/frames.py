"""Training frames in memory, and the deterministic, resumable order they are visited in."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from saom_core.data.reader import SaomDataset
from saom_core.train.embedding_cache import frame_key


@dataclass
class TrainFrame:
    image: np.ndarray  # (H, W, 3) uint8
    masks: torch.Tensor  # (N, H, W) bool
    class_ids: torch.Tensor  # (N,) int64
    key: str  # content hash (embedding cache key)

    def flipped(self) -> TrainFrame:
        return TrainFrame(
            np.ascontiguousarray(self.image[:, ::-1]), self.masks.flip(-1), self.class_ids, self.key + ":hflip"
        )


class FrameStore:
    """All frames of a split, decoded once (`preload`) or read on access."""

    def __init__(self, dataset: SaomDataset, preload: bool, progress: bool = True) -> None:
        self.dataset = dataset
        self._frames: list[TrainFrame] | None = None
        if preload:
            self._frames = [
                self._read(i)
                for i in tqdm(range(len(dataset)), desc="loading frames", disable=not progress, leave=False)
            ]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> TrainFrame:
        return self._frames[index] if self._frames is not None else self._read(index)

    def _read(self, index: int) -> TrainFrame:
        sample = self.dataset[index]
        return TrainFrame(
            sample.image, torch.from_numpy(sample.masks), torch.from_numpy(sample.class_ids), frame_key(sample.image)
        )


def epoch_batches(num_frames: int, batch: int, epoch: int, seed: int, rank: int, world_size: int) -> list[list[int]]:
    """This rank's batches of frame indices for an epoch: a seeded shuffle, split evenly over ranks.

    Every rank gets the same number of batches (the shuffle is cut to a multiple of
    world_size * batch), so DDP ranks never wait on a missing step.
    """
    order = np.random.default_rng([seed, epoch]).permutation(num_frames)
    per_step = world_size * batch
    usable = (num_frames // per_step) * per_step
    if usable == 0:  # fewer frames than one global batch: repeat the shuffle to fill one step
        order = np.resize(order, per_step)
        usable = per_step
    mine = order[:usable][rank::world_size]
    return [mine[i : i + batch].tolist() for i in range(0, len(mine), batch)]
