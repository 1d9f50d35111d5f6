"""Pre-train the in-house SSL backbones on emoji: DINO, MAE, CLIP-style, DAE, or none (random).

    python train/pretrain_backbone.py --method dino|mae|clip|dae|random --data data/emoji64.npz \
        --out runs/backbones/dino [--preset test|cpu-s|gpu-s] [--encoder NAME] [--steps N] [--resume] ...

No pre-trained SSL ViT can be downloaded here, so RepTok's backbones are made here. The backbone
is always a timm ViT built by `reptok.encoder.create_backbone`, so in-house and hub checkpoints
take the same path. Writes to <out>:

    backbone.safetensors   the timm ViT state_dict only (fp32); heads, decoders, projections stay behind.
                           Loads strictly into create_backbone(EncoderConfig.from_dict(config["encoder"])).
    config.json            {"encoder", "method", "steps", "wall_time_s", "knn", "train_config",
                            "method_config", "preset", "layer_scale_init", "data", "seed", "device"}
    log.jsonl              train/common.py's log lines plus {"event": "knn", ...} records
    checkpoint.pt, run_config.json   the Trainer's (resume with --resume); caption_vectors.npz for clip

The quality signal is `knn_accuracy` (k = 20, cosine, DINO's weighted vote) on the [cls] output:
train split = memory bank, held-out split (emoji unseen in every style) = queries.

The methods live in train/ssl_methods.py, their augmented views in train/ssl_views.py, the CLIP-style
method's cached caption embeddings in train/caption_vectors.py, the k-NN probe in train/knn.py; this
file holds the presets, the backbone files and the CLI.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from timm.models.vision_transformer import VisionTransformer
from torch import nn
from torch.utils.data import Dataset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reptok.encoder import ENCODER_PRESETS, Encoder, EncoderConfig
from train.caption_vectors import caption_vectors
from train.cli import add_train_args, select_preset, train_config_from_args
from train.common import Trainer
from train.data import build_dataset
from train.files import atomic_path
from train.knn import knn_accuracy
from train.loop_config import TrainConfig, to_plain
from train.ssl_methods import (
    ClipMethod,
    DaeMethod,
    DinoConfig,
    DinoMethod,
    MaeConfig,
    MaeMethod,
    PretrainConfig,
)
from train.ssl_views import build_backbone, module_device

METHODS = ("dino", "mae", "clip", "dae", "random")
# What a backbone can be pre-trained as: the in-house encoder presets, plus a narrow, shallow one
# on the same 64 px / patch-8 grid and timm class (~8x cheaper than vit-s8-64px) for CPU runs.
ENCODERS: dict[str, EncoderConfig] = {
    **{name: enc for name, enc in ENCODER_PRESETS.items() if not enc.pretrained},
    "vit-t8-d6-64px": ENCODER_PRESETS["vit-s8-64px"].replace(
        backbone_kwargs={"img_size": 64, "patch_size": 8, "embed_dim": 192, "depth": 6, "num_heads": 3}
    ),
    # ViT-Ti/8 (5.4 M parameters, 10.8 MB in fp16): the GPU backbones. Five of them (four compared
    # and the feature network) ship next to seven decoders within the 200 MB of assets/.
    "vit-t8-64px": ENCODER_PRESETS["vit-s8-64px"].replace(
        backbone_kwargs={"img_size": 64, "patch_size": 8, "embed_dim": 192, "depth": 12, "num_heads": 3}
    ),
}


def _loops(**per_method: TrainConfig) -> dict[str, TrainConfig]:
    return {**per_method, "random": TrainConfig(steps=0, batch_size=1, lr=1.0)}  # random trains nothing


_TEST = TrainConfig(steps=3, batch_size=8, lr=5e-4, warmup_steps=1, ema_decay=0.9, grad_clip=3.0, log_every=1)
_CPU: dict[str, Any] = {"weight_decay": 0.05, "ema_decay": 0.99, "grad_clip": 1.0, "log_every": 10}
_GPU: dict[str, Any] = {"weight_decay": 0.05, "ema_decay": 0.999, "log_every": 50, "num_workers": 4}
PRESETS: dict[str, PretrainConfig] = {
    # Seconds, for tests: the tiny encoder at 32 px.
    "test": PretrainConfig(
        encoder=ENCODER_PRESETS["test"],
        train=_loops(dino=_TEST, mae=_TEST, clip=_TEST, dae=_TEST),
        dino=DinoConfig(out_dim=64, hidden_dim=64, bottleneck_dim=32, local_crops=2),
        mae=MaeConfig(decoder_dim=32, decoder_depth=1, decoder_heads=2),
    ),
    # ~15 minutes each on 2 free CPU cores (measured: DINO 2.6 s/step, MAE 0.54, CLIP 0.82 at batch 64),
    # on the narrow vit-t8-d6-64px. Probes, held-out k-NN category accuracy (random init 0.48):
    # CLIP 300 steps 0.61; MAE 400 steps 0.47 (its loss falls, its [cls] barely moves); DINO 150
    # steps 0.48 (still near-uniform targets: DINO needs the GPU). `--encoder vit-s8-64px` trains
    # the shipped shape, ~4x slower per image.
    "cpu-s": PretrainConfig(
        encoder=ENCODERS["vit-t8-d6-64px"],
        train=_loops(
            dino=TrainConfig(steps=300, batch_size=64, lr=5e-4, warmup_steps=20, ckpt_every=100, **_CPU),
            mae=TrainConfig(steps=1500, batch_size=64, lr=1e-3, warmup_steps=50, ckpt_every=250, **_CPU),
            clip=TrainConfig(steps=1000, batch_size=64, lr=3e-4, warmup_steps=30, ckpt_every=250, **_CPU),
            dae=TrainConfig(steps=1500, batch_size=64, lr=1e-3, warmup_steps=30, ckpt_every=250, **_CPU),
        ),
        # Fewer prototypes and no temperature ramp: the only DINO setting that left uniform
        # targets within a few hundred steps in the CPU probes.
        # DINOv2's KoLeo term spreads the batch's [cls] apart: without it the CPU-scale DINO backbone
        # collapsed (held-out token effective rank 2.6 of 192, mean pairwise cos 0.98).
        dino=DinoConfig(
            out_dim=256, local_crops=2, teacher_temp_end=0.04, momentum_start=0.95, koleo_weight=0.1
        ),
    ),
    # One H100 in bf16, the three methods side by side (estimated ~6-8 minutes; not yet run).
    "gpu-s": PretrainConfig(
        encoder=ENCODERS["vit-t8-64px"],
        train=_loops(
            dino=TrainConfig(steps=3000, batch_size=256, lr=5e-4, warmup_steps=300, ckpt_every=500, **_GPU),
            mae=TrainConfig(steps=6000, batch_size=512, lr=1.5e-3, warmup_steps=400, ckpt_every=1000, **_GPU),
            clip=TrainConfig(steps=2500, batch_size=512, lr=5e-4, warmup_steps=300, ckpt_every=500, **_GPU),
            dae=TrainConfig(steps=6000, batch_size=512, lr=1.5e-3, warmup_steps=300, ckpt_every=1000, **_GPU),
        ),
        knn_every=1000,
        dino=DinoConfig(
            out_dim=4096, hidden_dim=2048, bottleneck_dim=256, local_crops=6, momentum_start=0.996
        ),
    ),
}


# ------------------------------------------------------------------------------ files and the CLI


def save_backbone(backbone: VisionTransformer, path: Path) -> None:
    """The timm ViT's state_dict in fp32 safetensors, written atomically."""
    state = {k: v.detach().float().cpu().contiguous().clone() for k, v in backbone.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp))
        tmp.chmod(0o644)  # safetensors writes 0600


def load_encoder(run_dir: str | Path, cosine_weight: float = math.inf) -> tuple[Encoder, dict[str, Any]]:
    """A pre-training run folder as a RepTok encoder: (Encoder with the run's weights, its config.json).

    The one reader of this folder format (stage A, evaluation and the checks here use it): strict keys,
    and errors that name the file at fault. The loaded cls embedding becomes the frozen target.
    """
    run_dir = Path(run_dir)
    config_path, weights_path = run_dir / "config.json", run_dir / "backbone.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(
                f"backbone folder {run_dir} has no {path.name} (train/pretrain_backbone.py)"
            )
    config = json.loads(config_path.read_text())
    if "encoder" not in config:
        raise ValueError(f"{config_path} has no 'encoder' entry; is it a pretrain_backbone.py folder?")
    encoder_config = EncoderConfig.from_dict(config["encoder"]).replace(
        cosine_weight=cosine_weight, pretrained=False
    )
    encoder = Encoder(encoder_config)
    try:
        encoder.backbone.load_state_dict(load_file(str(weights_path)), strict=True)
    except RuntimeError as err:  # missing / unexpected keys or shapes: say which files disagree
        raise ValueError(f"{weights_path} does not fit the backbone in {config_path}: {err}") from err
    encoder.reset_frozen_token()
    return encoder, config


def load_backbone(run_dir: str | Path) -> tuple[VisionTransformer, dict[str, Any]]:
    """A pre-trained backbone from a run folder: (ViT in eval mode, its config.json), strict keys."""
    encoder, config = load_encoder(run_dir)
    return encoder.backbone.eval(), config


def _append_log(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def make_method(method: str, cfg: PretrainConfig, train_ds: Dataset, out: Path, seed: int) -> nn.Module:
    if method == "dino":
        return DinoMethod(cfg, seed)
    if method == "mae":
        return MaeMethod(cfg, seed)
    if method == "dae":
        return DaeMethod(cfg, seed)
    if method == "clip":
        captions: list[str] = list(train_ds.captions)
        unique, vectors = caption_vectors(captions, out / "caption_vectors.npz")
        position = {caption: i for i, caption in enumerate(unique)}
        ids = torch.tensor([position[c] for c in captions], dtype=torch.long)  # (N_train,)
        return ClipMethod(cfg, seed, ids, vectors)
    raise ValueError(f"unknown method {method!r}; choose from {METHODS}")


def build_parser(preset: str, method: str) -> argparse.ArgumentParser:
    cfg = PRESETS[preset]
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--method", choices=METHODS, required=True, help="'random' trains nothing (no prior)")
    parser.add_argument("--data", type=Path, default=Path("data/emoji64.npz"), help=".npz or image folder")
    parser.add_argument("--preset", choices=sorted(PRESETS), default=preset, help="read first: sets defaults")
    parser.add_argument(
        "--encoder", choices=sorted(ENCODERS), default=None, help="backbone shape (default: preset's)"
    )
    parser.add_argument("--knn-every", type=int, default=cfg.knn_every, help="0: k-NN only at the end")
    parser.add_argument("--knn-k", type=int, default=cfg.knn_k)
    add_train_args(parser, cfg.train[method])
    return parser


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    argv = list(sys.argv[1:] if argv is None else argv)
    preset = select_preset(argv, PRESETS, "cpu-s")
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--method", choices=METHODS, default="dino")  # the loop defaults depend on it
    args = build_parser(preset, pre.parse_known_args(argv)[0].method).parse_args(argv)
    method, out = args.method, Path(args.out)
    base = PRESETS[args.preset]
    train_cfg = train_config_from_args(args)
    cfg = PretrainConfig(
        encoder=ENCODERS[args.encoder] if args.encoder else base.encoder,
        train={**base.train, method: train_cfg},
        knn_every=args.knn_every,
        knn_k=args.knn_k,
        layer_scale_init=base.layer_scale_init,
        dino=base.dino,
        mae=base.mae,
        clip=base.clip,
        dae=base.dae,
    )
    size = cfg.encoder.image_size
    train_ds = build_dataset(args.data, "train", "category", image_size=size)
    heldout_ds = build_dataset(args.data, "heldout", "category", image_size=size)
    label_keys = ("category", "subcategory") if hasattr(train_ds, "rows") else ("label",)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "log.jsonl"

    def evaluate(backbone: VisionTransformer, step: int) -> dict[str, Any]:
        start = time.perf_counter()
        result = knn_accuracy(backbone, train_ds, heldout_ds, label_keys, k=cfg.knn_k, config=cfg.encoder)
        result["time_s"] = round(time.perf_counter() - start, 2)
        _append_log(log_path, {"event": "knn", "step": step, **result})
        print(f"k-NN @ step {step}: " + ", ".join(f"{k} {result[k]:.3f}" for k in label_keys))
        return result

    if method == "random":
        backbone, steps, train_time = build_backbone(cfg.encoder, args.seed, cfg.layer_scale_init), 0, 0.0
        log_path.write_text(json.dumps({"event": "random_init", "step": 0, "seed": args.seed}) + "\n")
    else:
        model = make_method(method, cfg, train_ds, out, args.seed)
        method_cfg = getattr(cfg, method)
        run_config = {
            "method": method,
            "preset": args.preset,
            "data": str(args.data),
            "encoder": cfg.encoder.to_dict(),
            "layer_scale_init": cfg.layer_scale_init,
            method: to_plain(method_cfg),
        }
        trainer = Trainer(train_cfg, out, model, model.trainable(), run_config, resume=args.resume)
        batches = trainer.batches(train_ds)
        every = cfg.knn_every or train_cfg.steps
        stops = [s for s in range(every, train_cfg.steps, every) if s > trainer.step] + [train_cfg.steps]
        for stop in stops:
            # The Trainer trains up to cfg.steps; moving it in stages leaves room for k-NN in between
            # (LR is constant after warmup and the data order a function of the step: no side effects).
            trainer.cfg.steps = stop
            trainer.fit(batches, lambda m, batch, gen: m(batch, gen))
            if stop < train_cfg.steps:
                evaluate(trainer.ema.exported(), stop)
        backbone, steps, train_time = trainer.ema.exported(), trainer.step, trainer.elapsed_s

    knn = evaluate(backbone, steps)
    save_backbone(backbone, out / "backbone.safetensors")
    config = {
        "encoder": cfg.encoder.to_dict(),
        "method": method,
        "steps": steps,
        "wall_time_s": round(train_time, 1),  # the training loop, summed over resumes (k-NN not included)
        "knn": knn,
        "train_config": None if method == "random" else to_plain(train_cfg),
        "method_config": to_plain(getattr(cfg, method)) if method != "random" else None,
        "preset": args.preset,
        "layer_scale_init": cfg.layer_scale_init,
        "data": str(args.data),
        "seed": args.seed,
        "device": str(module_device(backbone)),
    }
    with atomic_path(out / "config.json") as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
    load_backbone(out)  # the contract: strict load into the plain encoder config
    print(f"wrote {out / 'backbone.safetensors'} and config.json")
    return config


if __name__ == "__main__":
    main()
