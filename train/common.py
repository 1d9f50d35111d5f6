"""Shared training machinery for the scripts in train/: one loop, resumable to the bit.

API (see train/train_tokenizer.py for a complete use). Here:

    (TrainConfig, to_plain and config_differences live in train/loop_config.py; the checkpoint's
    RNG states, fingerprint and atomic write in train/checkpoint.py)
    Trainer(cfg, out_dir, model, params, run_config, *, resume=False, compile_modules=None,
            clip_groups=None, lr_scales=None, unfingerprinted=())
        .fit(batches, loss_fn)         loss_fn(model, batch, generator) -> (loss, {name: float | 0-d tensor})
        .batches(dataset, collate=None)   resumable_batches from the trainer's step, rank and world size
        .ema  .step  .device  .is_main  .elapsed_s  .print(...)  .save_checkpoint()  .summary()

In train/cli.py: select_preset (read --preset first: the other flags default to its values),
stage_parser, add_train_args (--steps ... --resume --out), train_config_from_args,
add_time_schedule_arg. In train/batches.py: seed_everything (call before building models),
resumable_batches (infinite; batch k depends only on (seed, k)), step_generator (the per-step RNG
handed to loss_fn).

Determinism contract (single process, CPU): a run stopped after any checkpoint and continued with
--resume ends at exactly the weights of an uninterrupted run with the same seed. Nothing random is
drawn from global RNG state: the data order is a pure function of (seed, step) and loss_fn gets a
generator seeded from (seed, step, rank). The checkpoint still stores the global RNG states (torch,
CUDA, numpy, python) for code that does use them. It holds plain types only, so
`torch.load(path, weights_only=True)` reads it.

Data parallel: `accelerate launch train/x.py ...` runs unchanged. Gradients are averaged with one
all-reduce per step, so loss_fn may call any method of the model, not only forward (which is what
DDP would need). Each rank gets its own slice of every global batch and its own step generator.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from tqdm import tqdm

from train.batches import resumable_batches, step_generator
from train.checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    fingerprint,
    rng_state,
    save_atomic,
    set_rng_state,
)
from train.cpu_attention import explicit_attention
from train.loop_config import TrainConfig, autocast_dtype, config_differences, to_plain
from train.step_metrics import Window, batch_len

LossFn = Callable[[nn.Module, dict[str, Any], torch.Generator], tuple[Tensor, dict[str, float | Tensor]]]
# ----------------------------------------------------------------------------------- the trainer


class Trainer:
    """AdamW + warmup + EMA + autocast + atomic, resumable checkpoints around a user loss function.

    `model` holds everything the loss needs; `params` are the ones to train (the rest is frozen:
    not saved in checkpoints, only fingerprinted, since a rebuilt model reproduces it). The EMA copy
    shares the frozen parameters with `model` and averages `params`; buffers are copied.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        out_dir: Path,
        model: nn.Module,
        params: list[nn.Parameter],
        run_config: dict[str, Any],
        *,
        resume: bool = False,
        compile_modules: Sequence[nn.Module] | None = None,
        clip_groups: Sequence[Sequence[nn.Parameter]] | None = None,
        lr_scales: Mapping[nn.Parameter, float] | None = None,
        unfingerprinted: Sequence[nn.Module] = (),
    ) -> None:
        cfg.validate()
        self.cfg, self.out_dir = cfg, Path(out_dir)
        self.accelerator = Accelerator()
        self.device = self.accelerator.device
        self.is_main = self.accelerator.is_main_process
        self.rank, self.world_size = self.accelerator.process_index, self.accelerator.num_processes
        self.run_config = json.loads(json.dumps(to_plain({"train": cfg, **run_config})))
        self.step, self.elapsed_s = 0, 0.0
        self.checkpoint_path = self.out_dir / "checkpoint.pt"
        self.log_path = self.out_dir / "log.jsonl"

        names = {id(p): n for n, p in model.named_parameters()}
        unknown = [p for p in params if id(p) not in names]
        frozen_in_params = [names[id(p)] for p in params if id(p) in names and not p.requires_grad]
        if unknown or frozen_in_params or not params:
            raise ValueError(
                f"params must be non-empty trainable parameters of the model ({len(unknown)} not in it, "
                f"frozen: {frozen_in_params[:3]})"
            )
        trainable = {id(p) for p in params}
        self.frozen_names = {n for n, p in model.named_parameters() if id(p) not in trainable}
        # The resume check covers the frozen weights the loss uses; `unfingerprinted` names frozen
        # modules it never calls (stage A's VAE decoder), so replacing those does not block a resume.
        unused = {id(p) for m in unfingerprinted for p in m.parameters()}
        self.frozen_sha256 = fingerprint(
            {n: p for n, p in model.named_parameters() if n in self.frozen_names and id(p) not in unused}
        )
        self.model = model.to(self.device)
        self.params = params
        # Gradients clipped per group: in stage A the [cls] embedding's gradient is 10-300x the
        # decoder's, and one global norm would let it set the decoder's clipping every step.
        self.clip_groups = [list(g) for g in clip_groups] if clip_groups else [list(params)]
        if sorted(id(p) for g in self.clip_groups for p in g) != sorted(id(p) for p in params):
            raise ValueError("clip_groups must partition params")
        # The EMA shares frozen parameters (memo): a second copy of a big backbone buys nothing.
        memo = {id(p): p for p in self.model.parameters() if id(p) not in trainable}
        self.ema = copy.deepcopy(self.model, memo).eval().requires_grad_(False)
        ema_named = dict(self.ema.named_parameters())
        self._ema_pairs = [(ema_named[names[id(p)]], p) for p in params]
        ema_buffers = dict(self.ema.named_buffers())
        self._buffer_pairs = [(ema_buffers[n], b) for n, b in self.model.named_buffers()]

        # lr_scales: parameters that train at a multiple of cfg.lr (stage A's [cls] embedding), each in
        # its own group; the warmup and schedule scale every group alike.
        scales = {id(p): s for p, s in (lr_scales or {}).items()}
        decay = [p for p in params if p.ndim >= 2 and id(p) not in scales]
        no_decay = [p for p in params if p.ndim < 2 and id(p) not in scales]
        groups = [
            {"params": decay, "weight_decay": cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
            *(
                {"params": [p], "weight_decay": 0.0, "lr": cfg.lr * scales[id(p)]}
                for p in params
                if id(p) in scales
            ),
        ]
        self.optimizer = torch.optim.AdamW(
            [g for g in groups if g["params"]],
            lr=cfg.lr,
            betas=(0.9, 0.999),
            fused=True if self.device.type == "cuda" else None,
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, cfg.lr_multiplier)
        self.autocast_dtype = autocast_dtype(cfg.precision, self.device)

        if self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.checkpoint_path.is_file():
            if not resume:
                raise FileExistsError(
                    f"{self.out_dir} already holds a run ({self.checkpoint_path.name}); pass --resume to "
                    "continue it, or choose another --out"
                )
            self._load_checkpoint()
        elif resume:
            self.print(f"--resume: no checkpoint in {self.out_dir}, starting from step 0")
        if self.step > cfg.steps:
            raise ValueError(f"the checkpoint is at step {self.step}, past --steps {cfg.steps}")
        if self.is_main:
            (self.out_dir / "run_config.json").write_text(json.dumps(self.run_config, indent=2) + "\n")
            self._truncate_log()
        if cfg.compile and self.device.type == "cuda":
            for module in compile_modules if compile_modules is not None else [self.model]:
                module.compile()  # in place: state_dict keys stay the same
        elif cfg.compile:
            self.print("--compile: skipped on CPU")
        n_train = sum(p.numel() for p in params)
        n_frozen = sum(p.numel() for n, p in model.named_parameters() if n in self.frozen_names)
        self.print(
            f"device {self.device} x{self.world_size} | {n_train / 1e6:.2f}M trainable, "
            f"{n_frozen / 1e6:.2f}M frozen parameters | autocast {self.autocast_dtype or 'off (fp32)'}"
        )

    # ------------------------------------------------------------------------------- plumbing

    def print(self, *args: Any) -> None:
        if self.is_main:
            tqdm.write(" ".join(str(a) for a in args))

    def summary(self) -> dict[str, Any]:
        """How the run trained, for the info block of the model it saves."""
        return {
            "steps": self.step,
            "decay_steps": self.cfg.decay_steps,
            "precision": self.cfg.precision,
            "batch_size": self.cfg.batch_size * self.world_size,
            "device": f"{self.device} x{self.world_size}",
            "wall_time_s": round(self.elapsed_s, 1),  # training steps, summed over resumes
        }

    def batches(
        self, dataset: Any, collate: Callable[[list[Any]], dict[str, Any]] | None = None
    ) -> Iterator[dict[str, Any]]:
        """resumable_batches from this trainer's step, for this process's rank."""
        return resumable_batches(
            dataset, self.cfg.batch_size, self.cfg.seed, self.step, self.cfg.num_workers, collate,
            rank=self.rank, world_size=self.world_size,
        )  # fmt: skip

    def _to_device(self, batch: dict[str, Any]) -> dict[str, Any]:
        return {
            k: v.to(self.device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in batch.items()
        }

    def _trained_state(self, module: nn.Module) -> dict[str, Tensor]:
        # torch.save copies now and torch.load maps to CPU: no clone or .cpu() needed here.
        return {k: v for k, v in module.state_dict().items() if k not in self.frozen_names}

    def _load_trained_state(self, module: nn.Module, state: dict[str, Tensor], what: str) -> None:
        missing, unexpected = module.load_state_dict(state, strict=False)
        if unexpected or set(missing) != self.frozen_names:
            raise ValueError(
                f"{self.checkpoint_path}: {what} weights do not fit this model "
                f"(unexpected {unexpected[:3]}, missing {sorted(set(missing) - self.frozen_names)[:3]})"
            )

    def _log(self, record: dict[str, Any]) -> None:
        if self.is_main:
            with self.log_path.open("a") as f:
                f.write(json.dumps(to_plain(record)) + "\n")

    def _truncate_log(self) -> None:
        """Drop log lines of steps after the checkpoint: the resumed run writes them again."""
        if not self.log_path.is_file():
            return
        keep = []
        for line in self.log_path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= self.step:
                    keep.append(line + "\n")
            except json.JSONDecodeError:  # a line cut short by the kill
                continue
        self.log_path.write_text("".join(keep))

    # ---------------------------------------------------------------------------- checkpoints

    def save_checkpoint(self) -> None:
        """Write OUT/checkpoint.pt atomically (temp file + os.replace): a kill never leaves half a file."""
        if not self.is_main:
            return
        state = {
            "format": CHECKPOINT_FORMAT,
            "version": CHECKPOINT_VERSION,
            "step": self.step,
            "elapsed_s": self.elapsed_s,
            "run_config": self.run_config,
            "frozen_sha256": self.frozen_sha256,
            "model": self._trained_state(self.model),
            "ema": self._trained_state(self.ema),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": rng_state(),
            # Both are functions of (seed, step): stored so the checkpoint says what it resumes.
            "data": {"seed": self.cfg.seed, "position": self.step * self.world_size * self.cfg.batch_size},
            "step_generator": {"seed": self.cfg.seed, "next_step": self.step, "world_size": self.world_size},
        }
        save_atomic(state, self.checkpoint_path)

    def _load_checkpoint(self) -> None:
        ckpt = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        if ckpt.get("format") != CHECKPOINT_FORMAT or ckpt.get("version") != CHECKPOINT_VERSION:
            raise ValueError(
                f"{self.checkpoint_path} is not a {CHECKPOINT_FORMAT} v{CHECKPOINT_VERSION} file"
            )
        diffs = config_differences(ckpt["run_config"], self.run_config)
        if diffs:
            raise ValueError(
                f"cannot resume: {self.checkpoint_path} was written by another preset or config:\n  "
                + "\n  ".join(diffs[:8])
                + "\nuse the original flags, or a new --out to start another run"
            )
        # Checkpoints written before `unfingerprinted` existed fingerprint every frozen weight.
        every_frozen = {n: p for n, p in self.model.named_parameters() if n in self.frozen_names}
        if ckpt["frozen_sha256"] != self.frozen_sha256 and ckpt["frozen_sha256"] != fingerprint(every_frozen):
            raise ValueError(
                f"cannot resume: the frozen weights (backbone, VAE, ...) differ from the ones in "
                f"{self.checkpoint_path}; was the backbone file replaced?"
            )
        self._load_trained_state(self.model, ckpt["model"], "model")
        self._load_trained_state(self.ema, ckpt["ema"], "EMA")
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        set_rng_state(ckpt["rng"])
        saved_world = ckpt["step_generator"]["world_size"]
        if saved_world != self.world_size:
            self.print(f"note: resuming a {saved_world}-process run on {self.world_size}: data order changes")
        self.step, self.elapsed_s = int(ckpt["step"]), float(ckpt["elapsed_s"])
        self.print(f"resumed from {self.checkpoint_path} at step {self.step}")

    # ----------------------------------------------------------------------------------- loop

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        """The forward pass's context: autocast, and on a CPU in bf16 the written-out attention
        (train/cpu_attention.py: PyTorch's fused CPU kernel is several times slower there)."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast(self.device.type, dtype=self.autocast_dtype))
        if self.device.type == "cpu":
            stack.enter_context(explicit_attention())
        return stack

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.cfg.ema_decay, (1 + self.step) / (10 + self.step))  # warmup: short runs work too
        torch._foreach_lerp_([e for e, _ in self._ema_pairs], [p for _, p in self._ema_pairs], 1.0 - decay)
        for ema_buffer, buffer in self._buffer_pairs:
            ema_buffer.copy_(buffer)

    def _all_reduce_grads(self) -> None:
        """Average gradients over processes in one flat all-reduce (what DDP does, without its forward)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flat = self.accelerator.reduce(torch.cat([g.reshape(-1) for g in grads]), reduction="mean")
        offset = 0
        for p, g in zip(self.params, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(g)
            offset += g.numel()

    def fit(self, batches: Iterator[dict[str, Any]], loss_fn: LossFn) -> None:
        """Train from self.step to cfg.steps; log, checkpoint, and keep the EMA."""
        cfg = self.cfg
        self.model.train()
        self._log(
            {"event": "resume" if self.step else "start", "step": self.step, "device": str(self.device)}
        )
        refresh = 1 if self.device.type == "cpu" else 10  # a .item() per step costs nothing on a CPU
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not self.is_main, desc=self.out_dir.name)
        for_bar, for_log = Window(), Window()
        deadline = time.perf_counter() + 60.0 * cfg.max_minutes if cfg.max_minutes else math.inf
        while self.step < cfg.steps:
            step_start = time.perf_counter()
            batch = self._to_device(next(batches))
            with self._autocast():
                loss, metrics = loss_fn(self.model, batch, step_generator(cfg.seed, self.step, self.rank))
            loss.backward()
            if self.world_size > 1:
                self._all_reduce_grads()
            norms = [torch.nn.utils.clip_grad_norm_(g, cfg.grad_clip or math.inf) for g in self.clip_groups]
            grad_norm = torch.stack(norms).square().sum().sqrt()  # total norm before clipping
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self._update_ema()
            self.step += 1
            self.elapsed_s += time.perf_counter() - step_start

            values = {"loss": loss, **metrics, "grad_norm": grad_norm}
            n_images = batch_len(batch) * self.world_size
            for window in (for_bar, for_log):
                window.add(values, n_images)
            bar.update(1)
            if self.step % refresh == 0:
                means, rate = for_bar.flush()
                if not math.isfinite(means["loss"]):
                    raise FloatingPointError(f"loss is {means['loss']} at step {self.step}; lower --lr?")
                bar.set_postfix(loss=f"{means['loss']:.4f}", img_s=f"{rate:.1f}")
            if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                means, rate = for_log.flush()
                lr = self.scheduler.get_last_lr()[0]
                record = {
                    "step": self.step,
                    **means,
                    "lr": lr,
                    "img_per_s": rate,
                    "elapsed_s": self.elapsed_s,
                }
                self._log(record)
                self.print(" ".join(f"{k} {v:.4g}" for k, v in record.items()))
            out_of_time = self._out_of_time(deadline)
            if self.step % cfg.ckpt_every == 0 or self.step == cfg.steps or out_of_time:
                self.save_checkpoint()
            if out_of_time:
                break
        bar.close()
        if self.step < cfg.steps:  # stopped by --max-minutes: not "done", so a recipe knows to resume
            self._log({"event": "time_limit", "step": self.step, "max_minutes": cfg.max_minutes})
            self.print(f"--max-minutes {cfg.max_minutes}: stopped at step {self.step} of {cfg.steps}")
        else:
            self._log({"event": "done", "step": self.step, "elapsed_s": self.elapsed_s})
        self.accelerator.wait_for_everyone()
        self.model.eval()

    def _out_of_time(self, deadline: float) -> bool:
        """Past --max-minutes? Every process must stop at the same step: with several, they agree
        at log steps only (one all-reduce there)."""
        if deadline == math.inf:
            return False
        late = time.perf_counter() > deadline
        if self.world_size == 1:
            return late
        if self.step % self.cfg.log_every:
            return False
        flag = torch.tensor(float(late), device=self.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item() > 0)
