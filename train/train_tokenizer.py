"""Stage A: train the tokenizer, i.e. the encoder's input [cls] embedding and the flow decoder, jointly.

    python train/train_tokenizer.py --preset cpu-s --data data/emoji64.npz --out runs/tok-cpu-s
    python train/train_tokenizer.py --preset gpu-b --backbone runs/backbones/dino --vae runs/vae/vae --lam 0.5 --out runs/tok
    accelerate launch train/train_tokenizer.py --preset gpu-b ...          (data-parallel, unchanged)

Loss: flow_loss(decoder velocity given z) + λ·(1 − cos(z, z_frozen)), the encoder's cosine anchor.
--lam inf freezes the token (the pure SSL code); only the decoder trains then.

--backbone is a timm model name (random weights, or the hub's with --pretrained where it is
reachable; its shape comes from --encoder), an in-house backbone folder from
train/pretrain_backbone.py (backbone.safetensors + config.json), or a saved RepTok model folder
(assets/models/reptok-emoji: its SSL backbone with the original [cls] embedding). --space vae runs
the flow in the latent space of a diffusers AutoencoderKL, as the cpu-xs, cpu-main and gpu-b
presets do by default: --vae is a hub name, a saved folder, or a .json config (random weights:
tests); a saved RepTok model given as --backbone or --init brings its own VAE.

    python train/train_tokenizer.py --preset cpu-main --data my_images/ --backbone assets/models/reptok-emoji --out runs/my-tok

--init MODEL starts from a saved RepTok model instead of a fresh decoder: its adapted [cls] embedding
and its decoder (whose config it takes), on its own backbone (the default --backbone then), in its
image space and VAE. It continues a shipped model with more steps, or adapts it to your own images;
the optimizer starts afresh (a new warmup), and the EMA starts at its weights.

Writes OUT/checkpoint.pt (resume with --resume), OUT/log.jsonl, OUT/run_config.json and, at the
end, the EMA weights as a RepTok model folder OUT/model (load with RepTok.from_pretrained).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import Tensor, nn

from reptok.decoder import DECODER_PRESETS, Decoder, DecoderConfig, ImageSpace
from reptok.encoder import ENCODER_PRESETS, Encoder
from reptok.flow import TimeSampling, flow_loss
from reptok.pipeline import RepTok, RepTokConfig
from train.batches import seed_everything
from train.cli import add_time_schedule_arg, add_train_args, stage_parser, train_config_from_args
from train.common import LossFn, Trainer
from train.data import build_dataset
from train.loop_config import TrainConfig, to_plain
from train.stage_a_setup import (
    build_encoder,
    build_image_space,
    cached_encoding,
    encode_dataset,
    frozen_tokens,
    is_reptok_model,
    resolve_image_space,
    stage_a_steps,
    start_from,
)

# The VAE's decoding half: stage A never calls it (a fine-tuned decoder leaves the latents as they were).
VAE_DECODER_KEYS = ("vae.decoder.", "vae.post_quant_conv.")


@dataclass
class TokenizerPreset:
    encoder: str  # ENCODER_PRESETS name: the backbone's shape when --backbone is a timm name
    decoder: DecoderConfig  # token_dim, in_channels and input_size are set from encoder and image space
    train: TrainConfig
    lam: float = 1.0  # λ of the cosine anchor; inf = frozen token
    # The [cls] embedding's learning rate as a multiple of the decoder's. It is one vector whose every
    # step moves all tokens at once, read through a LayerNorm (only its direction counts).
    cls_lr_scale: float = 1.0
    image_size: int = 64  # side of the training images = what the decoder produces
    time_schedule: TimeSampling = "logit_normal"  # more steps mid-path, where velocity is hardest
    space: Literal["pixel", "vae"] = "pixel"  # where the flow runs unless --space (or --init) says


PRESETS: dict[str, TokenizerPreset] = {
    # Tiny, for tests: seconds on a CPU.
    "test": TokenizerPreset(
        encoder="test",
        decoder=DECODER_PRESETS["test"],
        train=TrainConfig(steps=4, batch_size=4, lr=1e-3, log_every=1, ckpt_every=2),
        image_size=32,
    ),
    # 2 CPU cores: 8×8-patch decoder (65 tokens instead of the 257 of s4-64px, which runs ~10x
    # slower on a CPU). With the narrow in-house vit-t8-d6 backbone: 1.4-1.9 s/step, 75 min in all
    # on the 2-core dev machine (the interim shipped model); blurry, colour-right reconstructions.
    "cpu-s": TokenizerPreset(
        encoder="vit-s8-64px",
        decoder=DECODER_PRESETS["s4-64px"].replace(patch_size=8),
        train=TrainConfig(
            steps=2400,
            batch_size=32,
            lr=4e-4,
            warmup_steps=100,
            log_every=50,
            ckpt_every=200,
            ema_decay=0.999,
        ),
    ),
    # 2 CPU cores, the ablations (λ sweep, backbone comparison), in the in-house VAE's latent space
    # (--space vae): the xs2-latent16 decoder, 800 steps of 32, ~10 min a run on one core, so two
    # runs share the machine. lr 1e-3: in 5-minute probes it beat 5e-4 (13.1 vs 12.9 dB, 53 vs 50 %
    # identification); x-prediction and z in the adaptive norm did not pay (12.2 dB / 30 %; +0.1 dB).
    # The [cls] embedding at 10x the lr: at 1x it hardly moves the token (cos to the frozen one 0.9999).
    "cpu-xs": TokenizerPreset(
        encoder="vit-s8-64px",
        decoder=DECODER_PRESETS["xs2-latent16"],
        train=TrainConfig(
            steps=800,
            batch_size=32,
            lr=1e-3,
            warmup_steps=50,
            log_every=50,
            ckpt_every=200,
            ema_decay=0.998,
        ),
        cls_lr_scale=10.0,
        space="vae",
    ),
    # 2 CPU cores, the default model: the cpu-xs run, longer, its decoder with a token map (at 400
    # steps it took identification from 43 to 84 %), the last 1,200 steps cooling down. The shipped
    # one: 34 min on both cores with --precision bf16 (AMD EPYC with avx512_bf16; fp32 is the
    # default, as bf16 autocast is slow on CPUs without native bf16).
    "cpu-main": TokenizerPreset(
        encoder="vit-s8-64px",
        decoder=DECODER_PRESETS["xs2-latent16-map"],
        train=TrainConfig(
            steps=4000,
            batch_size=32,
            lr=1e-3,
            warmup_steps=100,
            decay_steps=1200,
            log_every=100,
            ckpt_every=500,
            ema_decay=0.999,
        ),
        lam=0.1,
        cls_lr_scale=10.0,
        space="vae",
    ),
    # One H100, bf16, the runs of train/reproduce.sh side by side (estimated, not yet run). The same
    # latent decoder: ten of them ship, so the GPU's budget goes into steps, not width.
    "gpu-b": TokenizerPreset(
        encoder="vit-s8-64px",
        decoder=DECODER_PRESETS["xs2-latent16"],
        train=TrainConfig(
            steps=4000,
            batch_size=256,
            lr=3e-4,
            warmup_steps=500,
            log_every=100,
            ckpt_every=1000,
            ema_decay=0.9995,
            num_workers=0,
        ),
        space="vae",
    ),
}


class TokenizerModel(nn.Module):
    """What stage A holds: the encoder (only its cls embedding trains), the decoder, the frozen image space."""

    def __init__(self, encoder: Encoder, decoder: Decoder, image_space: ImageSpace) -> None:
        super().__init__()
        self.encoder, self.decoder, self.image_space = encoder, decoder, image_space


def tokenizer_loss(
    schedule: TimeSampling, cached: Tensor | None = None, anchors: Tensor | None = None
) -> LossFn:
    """Stage A's loss. `cached`: the image space's encoding of every training image (by dataset
    index), so a VAE space costs no encoder pass per step; `anchors` (N, 1, D): the original
    backbone's token of every training image, so the cosine anchor costs no frozen pass."""

    def loss_fn(
        model: TokenizerModel, batch: dict[str, Any], generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float | Tensor]]:
        images = batch["image"]  # (B, 3, H, W) in [-1, 1]
        if cached is not None:
            target = cached[torch.as_tensor(batch["index"]).cpu()].to(images)  # (B, C, S, S)
        else:
            with torch.no_grad():
                target = model.image_space.encode(images)  # (B, C, S, S): pixels or VAE latents
        # λ = inf: no gradient reaches the encoder, so it runs without a graph.
        z_frozen = None if anchors is None else anchors[torch.as_tensor(batch["index"]).cpu()]  # (B, 1, D)
        with torch.set_grad_enabled(model.encoder.backbone.cls_token.requires_grad):
            enc = model.encoder(images, z_frozen=z_frozen)
        z = enc.z  # (B, 1, D)
        flow = flow_loss(
            lambda x_t, t: model.decoder(x_t, t, z), target, schedule=schedule, generator=generator
        )
        metrics: dict[str, float | Tensor] = {"flow": flow.detach()}
        if enc.cosine_loss is None:
            return flow, metrics
        metrics["one_minus_cos"] = enc.cosine_loss.detach() / model.encoder.config.cosine_weight
        return flow + enc.cosine_loss, metrics

    return loss_fn


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser, name = stage_parser(argv, PRESETS, "cpu-s", prog="train_tokenizer.py", doc=__doc__)
    preset = PRESETS[name]
    parser.add_argument(
        "--backbone", default=None,
        help="timm model name, or an in-house backbone folder (default: the --encoder preset's model)",
    )  # fmt: skip
    parser.add_argument(
        "--encoder", choices=sorted(ENCODER_PRESETS), default=preset.encoder,
        help=f"encoder preset: the backbone's shape and normalisation (default {preset.encoder})",
    )  # fmt: skip
    parser.add_argument("--pretrained", action="store_true", help="load timm's hub weights for --backbone")
    parser.add_argument(
        "--decoder", choices=sorted(DECODER_PRESETS), default=None,
        help="decoder preset instead of the preset's own decoder",
    )  # fmt: skip
    parser.add_argument(
        "--token-map-channels", type=int, default=None,
        help="decoder token map channels instead of the decoder's own (0 = off; with --init, a new "
        "map starts closed, so the continued decoder starts as the saved one)",
    )  # fmt: skip
    parser.add_argument(
        "--lam", type=float, default=None,
        help=f"cosine weight λ; inf = frozen token (default: the --init model's, else the preset's: {preset.lam})",
    )  # fmt: skip
    parser.add_argument(
        "--cls-lr-scale", type=float, default=preset.cls_lr_scale,
        help=f"[cls] embedding learning rate / --lr ({preset.cls_lr_scale})",
    )  # fmt: skip
    parser.add_argument(
        "--init", type=Path, default=None,
        help="a saved RepTok model folder: start from its adapted [cls] embedding and decoder",
    )  # fmt: skip
    parser.add_argument(
        "--space", choices=["pixel", "vae"], default=None,
        help=f"where the flow runs (default: the --init model's, else the preset's: {preset.space})",
    )  # fmt: skip
    parser.add_argument(
        "--cache-dir", type=Path, default=None,
        help="keep the VAE latents and cosine anchors of the training images here for the next run on "
        "the same VAE / backbone and data (default: compute them each run)",
    )  # fmt: skip
    parser.add_argument(
        "--vae", default=None,
        help="--space vae: AutoencoderKL hub name, folder or .json config (default: the VAE of the "
        "--init model, else of a saved model given as --backbone)",
    )  # fmt: skip
    parser.add_argument(
        "--image-size", type=int, default=preset.image_size, help=f"training image side ({preset.image_size})"
    )
    add_time_schedule_arg(parser, preset.time_schedule)
    add_train_args(parser, preset.train, out_default=None)
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> Path:
    """Run stage A; returns the saved model folder."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    preset = PRESETS[args.preset]
    cfg = train_config_from_args(args)
    dataset = build_dataset(args.data, split="train", image_size=args.image_size)  # fails fast on bad --data

    seed_everything(cfg.seed)  # random backbones, decoder init and random VAEs follow the seed
    init = RepTok.from_pretrained(args.init) if args.init is not None else None
    if args.lam is None:
        args.lam = init.config.encoder.cosine_weight if init is not None else preset.lam
    if not (args.lam >= 0):
        raise ValueError(f"--lam must be >= 0 (or inf), got {args.lam}")
    if init is not None and not is_reptok_model(Path(args.backbone or args.init)):
        raise ValueError(f"--init {args.init} needs its own saved model as --backbone (the default)")
    backbone = args.backbone or (
        str(args.init) if init is not None else ENCODER_PRESETS[args.encoder].backbone
    )
    encoder, backbone_source, backbone_about = build_encoder(
        backbone, args.encoder, args.lam, args.pretrained
    )
    space, vae = resolve_image_space(
        args.space, args.vae, preset_space=preset.space, init=args.init, backbone=args.backbone
    )
    image_space, space_config, channels, factor = build_image_space(space, vae)
    if args.image_size % factor:
        raise ValueError(f"--image-size {args.image_size} is not divisible by the VAE's factor {factor}")
    base = DECODER_PRESETS[args.decoder] if args.decoder else preset.decoder
    decoder_config = (init.config.decoder if init is not None else base).replace(
        token_dim=encoder.dim, in_channels=channels, input_size=args.image_size // factor
    )
    if args.token_map_channels is not None:
        decoder_config = decoder_config.replace(token_map_channels=args.token_map_channels)
    decoder = Decoder(decoder_config)
    if init is not None:
        start_from(init, encoder, decoder)
    model = TokenizerModel(encoder, decoder, image_space)
    params = [p for p in model.parameters() if p.requires_grad]  # cls embedding (λ < inf) + decoder

    run_config = {
        "stage": "tokenizer",
        "preset": args.preset,
        "data": str(Path(args.data).resolve()),
        "image_size": args.image_size,
        "backbone": backbone_source,
        "encoder": encoder.config,
        "decoder": decoder_config,
        "image_space": space_config,
        "time_schedule": args.time_schedule,
        "cls_lr_scale": args.cls_lr_scale,
        "init": None if args.init is None else str(args.init),
    }
    cls_token = encoder.backbone.cls_token
    trainer = Trainer(
        cfg, args.out, model, params, run_config, resume=args.resume, compile_modules=[decoder],
        clip_groups=[[p for p in params if p is not cls_token], [cls_token]] if cls_token.requires_grad else None,
        lr_scales={cls_token: args.cls_lr_scale} if cls_token.requires_grad else None,
        # Stage A only encodes with the VAE: a fine-tuned VAE decoder (train_vae.py --finetune-decoder)
        # leaves the latents, and so a resume, as they were.
        unfingerprinted=[image_space.vae.decoder, image_space.vae.post_quant_conv] if image_space.vae is not None else (),
    )  # fmt: skip
    trainer.print(
        f"stage A | preset {args.preset} | {len(dataset)} images | backbone {backbone_source} | "
        f"λ = {args.lam} | decoder {sum(p.numel() for p in decoder.parameters()) / 1e6:.1f}M"
    )
    # Both are the same for every run on the same VAE / backbone and data: --cache-dir keeps them.
    device = f"{trainer.device.type} x{torch.get_num_threads()} threads"  # results may differ by threads
    cached = None
    if space_config.kind == "vae":
        read = {k: v for k, v in image_space.state_dict().items() if not k.startswith(VAE_DECODER_KEYS)}
        cached = cached_encoding(
            args.cache_dir, "latents", read, dataset,
            lambda: encode_dataset(image_space.encode, dataset, device=trainer.device),
            space=to_plain(space_config.replace(vae=None)), device=device,  # the VAE by its weights, not its path
        )  # fmt: skip
    # The cosine anchor's targets, once: only 0 < λ < inf has one.
    anchors = None
    if 0.0 < args.lam < float("inf"):
        read = {k: v for k, v in encoder.state_dict().items() if k != "backbone.cls_token"}  # the original's
        about = to_plain(encoder.config.replace(cosine_weight=0.0))  # normalisation, shape; not λ
        anchors = cached_encoding(
            args.cache_dir, "anchors", read, dataset,
            lambda: encode_dataset(frozen_tokens(encoder), dataset, device=trainer.device),
            encoder=about, device=device,
        )  # fmt: skip
    trainer.fit(trainer.batches(dataset), tokenizer_loss(args.time_schedule, cached, anchors))

    out = args.out / "model"
    if trainer.is_main:
        ema: TokenizerModel = trainer.ema.to("cpu")
        config = RepTokConfig(
            encoder=encoder.config,
            decoder=decoder_config,
            image_space=space_config,
            info=to_plain(
                {
                    "stage": "tokenizer",
                    "trained_with": "train/train_tokenizer.py",
                    "preset": args.preset,
                    "data": args.data,
                    "train_images": len(dataset),
                    "backbone": backbone_source,
                    **(
                        {
                            "init": str(args.init),
                            "init_steps": init.config.info.get("steps"),
                            # stage A steps behind this model, the runs it continues included
                            "total_steps": trainer.step + stage_a_steps(init.config.info),
                        }
                        if init
                        else {}
                    ),
                    "backbone_method": backbone_about["method"],
                    "backbone_knn": backbone_about["knn"],
                    "lam": args.lam,
                    **trainer.summary(),
                }
            ),
        )
        RepTok(config, ema.encoder, ema.decoder, ema.image_space).save_pretrained(out)
        trainer.print(f"saved {out}")
    trainer.accelerator.wait_for_everyone()
    return out


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        sys.exit(f"error: {err}")
