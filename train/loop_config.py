"""The training loop's configuration: TrainConfig (the knobs every script shares, with its LR
schedule), to_plain (configs -> JSON-safe plain types) and config_differences (what --resume refuses).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

Precision = Literal["auto", "fp32", "bf16"]
# Run-config entries that may change on --resume. Most change only speed or logging. steps and
# decay_steps change the LR schedule's end, on purpose: the LR is constant between warmup and the
# final decay (warmup-stable-decay, Hägele et al. 2024, arXiv 2405.18392), so a run still in its
# stable phase can be extended (--steps) or cooled down from its last checkpoint (--decay-steps),
# and both give the run that had had those numbers from the start.
RESUMABLE_CHANGES = frozenset(
    f"train.{name}"
    for name in (
        "steps", "decay_steps", "log_every", "ckpt_every", "num_workers", "compile", "precision", "max_minutes"
    )
)  # fmt: skip


@dataclass
class TrainConfig:
    steps: int  # optimizer steps in total, counted across resumes
    batch_size: int  # per process
    lr: float  # peak learning rate (AdamW); constant after warmup until the final decay
    weight_decay: float = 0.0  # AdamW decay, on matrices only (not biases, norms, embeddings' 1-D rows)
    warmup_steps: int = 0  # linear warmup from 0 to lr
    # Linear decay of the LR to 0 over the last decay_steps steps (the "cooldown" of a
    # warmup-stable-decay schedule); 0: constant to the end, so a stop is not a different schedule.
    decay_steps: int = 0
    ema_decay: float = 0.999  # the saved model is the EMA; warmed up as min(decay, (1+k)/(10+k))
    grad_clip: float = 1.0  # max global gradient norm; 0 disables clipping
    log_every: int = 50
    ckpt_every: int = 1000  # also written at the last step
    seed: int = 0
    num_workers: int = 0  # DataLoader workers; 0 loads in the main process (in-memory data sets)
    precision: Precision = "auto"  # auto: bf16 autocast on a GPU that has it, fp32 elsewhere
    compile: bool = False  # torch.compile the heavy modules (GPU only; ignored on CPU)
    # Stop cleanly (checkpoint, then the script saves its model) once this call has trained this many
    # minutes; 0: no limit. For machines lent with a hard time limit: --resume continues the run, and
    # the LR is constant after warmup, so a stop is not a different schedule.
    max_minutes: float = 0.0

    def validate(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or self.warmup_steps < 0 or self.decay_steps < 0:
            raise ValueError(f"need steps >= 0, batch_size >= 1, warmup/decay_steps >= 0; got {self}")
        if not self.lr > 0 or self.weight_decay < 0 or self.grad_clip < 0:
            raise ValueError(f"need lr > 0, weight_decay >= 0, grad_clip >= 0; got {self}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.max_minutes < 0:
            raise ValueError(f"max_minutes must be >= 0 (0: no limit), got {self.max_minutes}")
        if self.log_every < 1 or self.ckpt_every < 1:
            raise ValueError("log_every and ckpt_every must be at least 1")

    def lr_multiplier(self, step: int) -> float:
        """LR of optimizer step `step` (0-based) as a fraction of lr: warmup, constant, final decay."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        cool = min(1.0, max(0.0, (self.steps - step) / self.decay_steps)) if self.decay_steps else 1.0
        return min(warm, cool)


def to_plain(value: Any) -> Any:
    """JSON-safe plain types (what checkpoints and config files hold); inf/nan become strings."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        as_dict = value.to_dict() if hasattr(value, "to_dict") else dataclasses.asdict(value)
        return to_plain(as_dict)
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise TypeError(f"{type(value).__name__} is not a plain config value: {value!r}")


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out |= _flatten(v, key + ".") if isinstance(v, Mapping) else {key: v}
    return out


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """'key: checkpoint X, now Y' for every run-config entry that may not change on resume.

    A key the checkpoint lacks is a config field added to the code since the run started; like
    `Config.from_dict` reading an older config.json, its default is taken to keep the old
    behaviour, so it does not block the resume. A key the code no longer has does.
    """
    a, b = _flatten(saved), _flatten(current)
    missing = "(absent)"
    return [
        f"{k}: checkpoint {a[k]!r}, now {b.get(k, missing)!r}"
        for k in sorted(a)
        if k not in RESUMABLE_CHANGES and a[k] != b.get(k, missing)
    ]


def autocast_dtype(precision: Precision, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for `precision` on `device`; None: fp32, no autocast."""
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision != "auto":
        raise ValueError(f"precision must be auto, fp32 or bf16, not {precision!r}")
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 leftovers (norms, losses) on tensor cores
        return torch.bfloat16
    return None
