"""The command-line flags the training scripts share: a --preset read first (it sets every other
flag's default), --data, the training-loop flags that fill a TrainConfig, and --time-schedule."""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, get_args

from reptok.flow import TimeSampling
from train.loop_config import TrainConfig


def select_preset(argv: Sequence[str], presets: Mapping[str, Any], default: str) -> str:
    """The --preset in argv, read before the full parser exists (its defaults are the preset's)."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", choices=sorted(presets), default=default)
    return pre.parse_known_args(list(argv))[0].preset


def stage_parser(
    argv: Sequence[str], presets: Mapping[str, Any], default: str, *, prog: str, doc: str | None
) -> tuple[argparse.ArgumentParser, str]:
    """A stage script's parser with its --preset and --data, and the preset named in argv (read
    first, so the other flags can take that preset's values as their defaults)."""
    parser = argparse.ArgumentParser(
        prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--preset", choices=sorted(presets), default=default,
        help=f"named configuration (default {default}); the defaults below are this preset's",
    )  # fmt: skip
    parser.add_argument(
        "--data", default="data/emoji64.npz", help="emoji .npz or a folder root/<class>/<image>"
    )
    return parser, select_preset(argv, presets, default)


def add_time_schedule_arg(parser: argparse.ArgumentParser, default: TimeSampling) -> None:
    parser.add_argument(
        "--time-schedule", choices=list(get_args(TimeSampling)), default=default,
        help=f"training time distribution ({default})",
    )  # fmt: skip


def add_guidance_interval_args(parser: argparse.ArgumentParser, what: str) -> None:
    """--cfg-interval / --text-cfg-interval LO HI: SamplingConfig's guidance intervals (the class
    generator's, and the text generator's where it differs) for `what` ("shipped", "of the samples")."""
    whose = {
        "--cfg-interval": "the class generator (and the text generator, where no text interval is set)",
        "--text-cfg-interval": "the text generator",
    }
    for flag, which in whose.items():
        parser.add_argument(
            flag, type=float, nargs=2, metavar=("LO", "HI"),
            help=f"guide {which} only for t in [LO, HI], {what} (default: the model's)",
        )  # fmt: skip


def guidance_interval_overrides(args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    """The SamplingConfig fields `add_guidance_interval_args` set on the command line."""
    given = {"cfg_interval": args.cfg_interval, "text_cfg_interval": args.text_cfg_interval}
    return {k: (float(v[0]), float(v[1])) for k, v in given.items() if v is not None}


def add_train_args(
    parser: argparse.ArgumentParser, defaults: TrainConfig, *, out_default: str | Path | None = None
) -> None:
    """The loop flags every script shares; their defaults are `defaults` (the chosen preset's)."""
    d = defaults
    g = parser.add_argument_group("training loop (defaults shown are the chosen preset's)")
    g.add_argument("--steps", type=int, default=d.steps, help="total optimizer steps, across resumes")
    g.add_argument("--batch-size", type=int, default=d.batch_size, help="batch size per process")
    g.add_argument("--lr", type=float, default=d.lr, help="AdamW learning rate after warmup")
    g.add_argument("--weight-decay", type=float, default=d.weight_decay, help="AdamW decay on matrices")
    g.add_argument("--warmup-steps", type=int, default=d.warmup_steps, help="linear LR warmup")
    g.add_argument(
        "--decay-steps", type=int, default=d.decay_steps,
        help="linear LR decay to 0 over the last N steps (0: constant); may be set on --resume to cool a run down",
    )  # fmt: skip
    g.add_argument("--ema-decay", type=float, default=d.ema_decay, help="EMA of the weights (what is saved)")
    g.add_argument("--grad-clip", type=float, default=d.grad_clip, help="max gradient norm (0: off)")
    g.add_argument("--log-every", type=int, default=d.log_every, help="steps between log lines")
    g.add_argument("--ckpt-every", type=int, default=d.ckpt_every, help="steps between checkpoints")
    g.add_argument("--seed", type=int, default=d.seed, help="init, data order and noise all follow it")
    g.add_argument("--num-workers", type=int, default=d.num_workers, help="DataLoader workers")
    g.add_argument(
        "--precision", choices=["auto", "fp32", "bf16"], default=d.precision,
        help="auto: bf16 autocast on a GPU with bf16, fp32 on CPU",
    )  # fmt: skip
    g.add_argument(
        "--compile", action=argparse.BooleanOptionalAction, default=d.compile,
        help="torch.compile the heavy modules (GPU only)",
    )  # fmt: skip
    g.add_argument(
        "--max-minutes", type=float, default=d.max_minutes,
        help="stop cleanly after this many minutes of training in this call (0: no limit); --resume goes on",
    )  # fmt: skip
    g.add_argument(
        "--resume", action="store_true",
        help="continue from OUT/checkpoint.pt (refused if it is another preset or config); "
        "starts fresh when there is none",
    )  # fmt: skip
    g.add_argument(
        "--out", type=Path, default=out_default, required=out_default is None,
        help="run folder: checkpoint.pt, log.jsonl, run_config.json and the saved model",
    )  # fmt: skip


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(TrainConfig)})
    cfg.validate()
    return cfg
