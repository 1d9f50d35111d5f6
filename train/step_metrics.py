"""What the training loop reports: running means of the step metrics between two flushes."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor


class Window:
    """Sums of the step metrics since the last flush; device tensors, so no GPU sync per step."""

    def __init__(self) -> None:
        self.sums: dict[str, Tensor] = {}
        self.steps, self.images, self.start = 0, 0, time.perf_counter()

    def add(self, values: Mapping[str, float | Tensor], images: int) -> None:
        for name, value in values.items():
            value = torch.as_tensor(value).detach().float()
            self.sums[name] = self.sums[name] + value if name in self.sums else value
        self.steps, self.images = self.steps + 1, self.images + images

    def flush(self) -> tuple[dict[str, float], float]:
        """(mean of each metric, images per second) since the last flush."""
        now = time.perf_counter()
        means = {k: float(v) / max(self.steps, 1) for k, v in self.sums.items()}
        rate = self.images / max(now - self.start, 1e-9)
        self.sums, self.steps, self.images, self.start = {}, 0, 0, now
        return means, rate


def batch_len(batch: Mapping[str, Any]) -> int:
    for value in batch.values():
        if isinstance(value, Tensor) and value.dim() > 0:
            return int(value.shape[0])
    return len(next(iter(batch.values())))
