"""Stage B: train a flow generator over the one-token latents of a trained tokenizer.

    python train/train_generator.py --tokenizer runs/tok-cpu-s/model --cond class --out runs/gen-class
    python train/train_generator.py --tokenizer runs/gen-class/model --cond text --out runs/gen-both
    accelerate launch train/train_generator.py --preset gpu-b ...             (data-parallel, unchanged)

The tokenizer's encoder is frozen: the training set is encoded ONCE and cached in OUT/tokens.pt
(tokens, labels, captions and, for --cond text, the frozen text encoder's hidden states, all plain
tensors). The generator trains on standardised tokens (its LatentStats are set from the cache).
--cond class: the attention-free MLP-Mixer, labels by --label, a fraction --class-dropout replaced
by the null class for classifier-free guidance. --cond text: the cross-attention generator over
MiniLM (or --text-encoder) hidden states, a fraction --text-dropout of prompts replaced by the null
text. Both dropouts are drawn from the trainer's per-step generator, so runs resume exactly.

The result is the tokenizer's model with the generator added, saved to OUT/model. Its backbone
is referenced from the tokenizer folder (a relative path) rather than copied, unless
--copy-backbone. A tokenizer folder that already has the other generator keeps it: run class,
then text on the class output, to get a model that does both.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from accelerate import PartialState
from torch import Tensor, nn
from tqdm import tqdm

from reptok.flow import TimeSampling, flow_loss
from reptok.generator import (
    MIXER_PRESETS,
    TEXT_PRESETS,
    MixerGenerator,
    MixerGeneratorConfig,
    TextGenerator,
    TextGeneratorConfig,
)
from reptok.pipeline import RepTok
from reptok.text import FrozenTextEncoder, TextEncoderConfig
from train.batches import seed_everything
from train.checkpoint import save_atomic
from train.cli import add_time_schedule_arg, add_train_args, stage_parser, train_config_from_args
from train.common import LossFn, Trainer
from train.data import build_dataset
from train.loop_config import TrainConfig, to_plain

TOKENS_FORMAT = 1


@dataclass
class GeneratorPreset:
    class_generator: MixerGeneratorConfig  # token_dim and num_classes are set from tokenizer and data
    text_generator: TextGeneratorConfig  # token_dim and text_dim are set from tokenizer and text encoder
    train: TrainConfig
    time_schedule: TimeSampling = "logit_normal"


PRESETS: dict[str, GeneratorPreset] = {
    "test": GeneratorPreset(
        class_generator=MIXER_PRESETS["test"],
        text_generator=TEXT_PRESETS["test"],
        train=TrainConfig(steps=4, batch_size=8, lr=1e-3, log_every=1, ckpt_every=2),
    ),
    # 2 CPU cores: a token is one vector, so a narrower mixer trains thousands of steps in minutes.
    "cpu-s": GeneratorPreset(
        class_generator=MIXER_PRESETS["mixer-s"].replace(width=512, depth=6),
        text_generator=TEXT_PRESETS["text-s"].replace(width=384, depth=4, num_heads=6),
        train=TrainConfig(
            steps=3000, batch_size=128, lr=3e-4, warmup_steps=200, log_every=100, ckpt_every=500
        ),
    ),
    # 2 CPU cores, one generator per ablation row (gFD needs one): a narrow mixer (~2 M parameters).
    "cpu-xs": GeneratorPreset(
        class_generator=MIXER_PRESETS["mixer-s"].replace(width=256, depth=4),
        text_generator=TEXT_PRESETS["text-s"].replace(width=384, depth=4, num_heads=6),
        train=TrainConfig(
            steps=1500, batch_size=128, lr=3e-4, warmup_steps=100, log_every=100, ckpt_every=500
        ),
    ),
    # One H100 (estimated, not yet run): many passes over the cached tokens. The class mixer stays
    # the cpu-xs one: seven ship (one per ablation row), and a token is a single vector.
    "gpu-b": GeneratorPreset(
        class_generator=MIXER_PRESETS["mixer-s"].replace(width=256, depth=4),
        text_generator=TEXT_PRESETS["text-s"].replace(width=384, depth=4, num_heads=6),
        train=TrainConfig(
            steps=20000,
            batch_size=512,
            lr=2e-4,
            warmup_steps=1000,
            log_every=200,
            ckpt_every=2000,
            ema_decay=0.9995,
        ),
    ),
}


# ------------------------------------------------------------------------------ token cache


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def encode_texts(
    text_encoder: FrozenTextEncoder, prompts: list[str], batch_size: int
) -> tuple[Tensor, Tensor]:
    """prompts -> hidden states (U, L, Dt) zero-padded to the longest, mask (U, L) True for real tokens."""
    hidden, masks = [], []
    for i in tqdm(range(0, len(prompts), batch_size), desc="encoding captions", leave=False):
        h, m = text_encoder(prompts[i : i + batch_size])
        hidden.append(h.cpu())
        masks.append(m.cpu())
    length = max(h.shape[1] for h in hidden)
    hidden = [torch.nn.functional.pad(h, (0, 0, 0, length - h.shape[1])) for h in hidden]
    masks = [torch.nn.functional.pad(m, (0, length - m.shape[1]), value=False) for m in masks]
    return torch.cat(hidden), torch.cat(masks)


@torch.no_grad()
def encode_dataset(
    model: RepTok, dataset: Any, device: torch.device, batch_size: int, text_encoder_name: str | None
) -> dict[str, Any]:
    """Tokens (N, 1, D), labels (N,), captions and optionally text hidden states of the whole set."""
    encoder = model.encoder.to(device).eval()
    tokens, labels, captions = [], [], []
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc="encoding images", leave=False):
        tokens.append(encoder(batch["image"].to(device)).z.float().cpu())  # (b, 1, D)
        labels.append(batch["label"])
        captions.extend(batch["caption"])
    cache: dict[str, Any] = {"z": torch.cat(tokens), "label": torch.cat(labels).long(), "captions": captions}
    if text_encoder_name is not None:
        text_encoder = FrozenTextEncoder(TextEncoderConfig(name=text_encoder_name)).to(device)
        prompts = sorted(set(captions))
        index = {p: i for i, p in enumerate(prompts)}
        hidden, mask = encode_texts(text_encoder, prompts, batch_size)
        cache["text"] = {
            "prompts": prompts,
            "hidden": hidden,  # (U, L, Dt)
            "mask": mask,  # (U, L)
            "index": torch.tensor([index[c] for c in captions]),  # (N,) row of each item's caption
        }
    model.encoder.cpu()
    return cache


def load_or_encode(path: Path, key: dict[str, Any], make: Any, resume: bool) -> dict[str, Any]:
    """The cache at `path` if it was made from the same tokenizer, data and text encoder; else make it
    (a resumed run must find the cache it trained on: anything else is another run)."""
    if path.is_file():
        cached = torch.load(path, map_location="cpu", weights_only=True)
        if cached.get("key") == key:
            return cached
        if resume:
            raise ValueError(
                f"cannot resume: {path} was encoded from another tokenizer, data or text encoder"
            )
    cache = make() | {"key": key}
    if PartialState().is_main_process:  # every process encodes (deterministic); one writes
        save_atomic(cache, path)
    return cache


# ----------------------------------------------------------------------------------- losses


def class_loss(schedule: TimeSampling) -> LossFn:
    def loss_fn(
        model: MixerGenerator, batch: dict[str, Any], generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float | Tensor]]:
        z, labels = batch["z"], batch["label"]  # (B, 1, D) standardised, (B,)
        drop = torch.rand(labels.shape, generator=generator) < model.config.class_dropout  # (B,)
        labels = torch.where(drop.to(labels.device), model.null_class, labels)
        loss = flow_loss(lambda x_t, t: model(x_t, t, labels), z, schedule=schedule, generator=generator)
        return loss, {}

    return loss_fn


def text_loss(schedule: TimeSampling, hidden: Tensor, mask: Tensor) -> LossFn:
    """`hidden` (U, L, Dt) / `mask` (U, L): the cached prompt states, on the training device."""

    def loss_fn(
        model: TextGenerator, batch: dict[str, Any], generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float | Tensor]]:
        z, rows = batch["z"], batch["text_index"]  # (B, 1, D), (B,)
        text_mask = mask[rows]  # (B, L)
        length = int(text_mask.any(0).nonzero().max()) + 1  # trim padding no prompt of this batch uses
        text, text_mask = hidden[rows, :length], text_mask[:, :length]  # (B, l, Dt), (B, l)
        uncond = (torch.rand(z.shape[0], generator=generator) < model.config.text_dropout).to(z.device)
        loss = flow_loss(
            lambda x_t, t: model(x_t, t, text, text_mask, uncond=uncond),
            z,
            schedule=schedule,
            generator=generator,
        )
        return loss, {}

    return loss_fn


# -------------------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser, name = stage_parser(argv, PRESETS, "cpu-s", prog="train_generator.py", doc=__doc__)
    preset = PRESETS[name]
    parser.add_argument("--tokenizer", type=Path, required=True, help="a saved RepTok model folder (stage A)")
    parser.add_argument(
        "--cond", choices=["class", "text"], default="class", help="what the generator follows"
    )
    parser.add_argument(
        "--label",
        choices=["category", "subcategory"],
        default="category",
        help="emoji classes (--cond class)",
    )
    parser.add_argument(
        "--class-dropout", type=float, default=preset.class_generator.class_dropout,
        help=f"null-class fraction for CFG ({preset.class_generator.class_dropout})",
    )  # fmt: skip
    parser.add_argument(
        "--text-dropout", type=float, default=preset.text_generator.text_dropout,
        help=f"null-text fraction for CFG ({preset.text_generator.text_dropout})",
    )  # fmt: skip
    parser.add_argument("--text-encoder", default="minilm", help="'minilm' (offline), a hub name or a folder")
    parser.add_argument(
        "--encode-batch-size", type=int, default=128, help="batch size of the one-off encoding"
    )
    parser.add_argument(
        "--copy-backbone",
        action="store_true",
        help="copy the backbone into OUT/model instead of referencing it",
    )
    add_time_schedule_arg(parser, preset.time_schedule)
    add_train_args(parser, preset.train, out_default=None)
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> Path:
    """Run stage B; returns the saved model folder."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    preset = PRESETS[args.preset]
    cfg = train_config_from_args(args)
    tokenizer = RepTok.from_pretrained(args.tokenizer)  # FileNotFoundError names the missing config.json
    dataset = build_dataset(args.data, split="train", label=args.label, image_size=tokenizer.image_size)
    class_names: list[str] = list(dataset.class_names)
    seed_everything(cfg.seed)

    text_name = args.text_encoder if args.cond == "text" else None
    tokenizer_sha = _file_sha256(args.tokenizer / "tokenizer.safetensors")
    key = {
        "format": TOKENS_FORMAT,
        "tokenizer_sha256": tokenizer_sha,
        "backbone_sha256": tokenizer.config.backbone_sha256,
        "data": str(Path(args.data).resolve()),
        "label": args.label,
        "text_encoder": text_name,
    }
    device = PartialState().device  # this process's GPU under `accelerate launch`
    if args.out.joinpath("checkpoint.pt").is_file() and not args.resume:
        raise FileExistsError(
            f"{args.out} already holds a run; pass --resume to continue it, or another --out"
        )
    args.out.mkdir(parents=True, exist_ok=True)
    cache = load_or_encode(
        args.out / "tokens.pt",
        key,
        lambda: encode_dataset(tokenizer, dataset, device, args.encode_batch_size, text_name),
        args.resume,
    )

    if args.cond == "class":
        gen_config = preset.class_generator.replace(
            token_dim=tokenizer.token_dim, num_classes=len(class_names), class_dropout=args.class_dropout
        )
        model: nn.Module = MixerGenerator(gen_config)
    else:
        gen_config = preset.text_generator.replace(
            token_dim=tokenizer.token_dim,
            text_dim=cache["text"]["hidden"].shape[-1],
            text_dropout=args.text_dropout,
        )
        model = TextGenerator(gen_config)
    model.stats.set_stats(cache["z"])
    columns = {"z": model.stats.normalize(cache["z"]), "label": cache["label"]}  # (N, 1, D), (N,)
    if args.cond == "text":
        columns["text_index"] = cache["text"]["index"]

    run_config = {
        "stage": "generator",
        "preset": args.preset,
        "cond": args.cond,
        "generator": gen_config,
        "tokens": key,
        "time_schedule": args.time_schedule,
    }
    trainer = Trainer(cfg, args.out, model, list(model.parameters()), run_config, resume=args.resume)
    trainer.print(
        f"stage B | preset {args.preset} | cond {args.cond} | {len(columns['z'])} tokens of dim "
        f"{tokenizer.token_dim} | {len(class_names)} classes"
    )
    if args.cond == "class":
        loss_fn = class_loss(args.time_schedule)
    else:
        text = cache["text"]
        loss_fn = text_loss(
            args.time_schedule, text["hidden"].to(trainer.device), text["mask"].to(trainer.device)
        )
    trainer.fit(trainer.batches(columns), loss_fn)

    out = args.out / "model"
    if trainer.is_main:
        generator = trainer.ema.to("cpu")
        info = {
            "trained_with": "train/train_generator.py",
            "preset": args.preset,
            "data": args.data,
            "label": args.label if args.cond == "class" else None,
            "tokens": len(columns["z"]),
            **trainer.summary(),
        }
        if args.cond == "class":
            tokenizer.class_generator = generator
            tokenizer.config.class_generator = gen_config
            tokenizer.config.class_names = class_names
            tokenizer.config.class_groups = getattr(dataset, "class_groups", None)
        else:
            tokenizer.text_generator = generator
            tokenizer.config.text_generator = gen_config
            tokenizer.config.text_encoder = TextEncoderConfig(name=args.text_encoder)
        tokenizer.config.info = {**tokenizer.config.info, f"{args.cond}_generator": to_plain(info)}
        shared = None
        if not args.copy_backbone:
            backbone = (args.tokenizer / tokenizer.config.backbone_file).resolve()
            out.mkdir(parents=True, exist_ok=True)
            shared = Path(os.path.relpath(backbone, out.resolve())).as_posix()
        tokenizer.save_pretrained(out, backbone_file=shared)  # the shared file is checked, in its own dtype
        trainer.print(f"saved {out}" + (f" (backbone: {shared})" if shared else ""))
    trainer.accelerator.wait_for_everyone()
    return out


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        sys.exit(f"error: {err}")
