"""Train the in-house latent space: a small diffusers `AutoencoderKL` (the paper's SD-VAE role).

    python train/train_vae.py --preset cpu --data data/emoji64.npz --out runs/vae
    python train/train_tokenizer.py ... --space vae --vae runs/vae/vae     (stage A's flow then runs in it)

No pre-trained VAE can be downloaded here, so the embedded models' latent space is made here, once,
and every tokenizer references the same folder. The flow of stage A then predicts 16×16×4 latents
instead of 64×64×3 pixels (3x fewer numbers, and smooth ones), and the VAE's decoder draws the edges.

Loss: L1 + MSE on pixels, plus a small KL term toward N(0, I) that keeps the latent space smooth
and bounded (SD-VAE's role; it had LPIPS and a GAN on top, which need pre-trained networks and far
more compute than this machine has, so this VAE is an L1/L2 one). At the end the latent scaling
factor (1 / std of the posterior means on the train split, SD's convention) is measured and written
into the saved config, so the flow sees latents of unit variance, and the VAE's own held-out PSNR,
SSIM and identification (the ceiling of every tokenizer on top of it) into OUT/vae/training.json.

`--finetune-decoder FOLDER` instead trains only the decoder of an existing VAE (its encoder,
posterior and scaling factor stay, so every latent, and every tokenizer trained on them, stays
valid), on whole images rather than crops: SD's "ft-MSE" VAE decoders were made this way.

    python train/train_vae.py --preset cpu-decoder --finetune-decoder runs/vae/vae --out runs/vae-ft

Writes OUT/checkpoint.pt (resume with --resume), OUT/log.jsonl, OUT/run_config.json and, at the
end, the EMA weights as a diffusers folder OUT/vae (load with AutoencoderKL.from_pretrained).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from diffusers import AutoencoderKL
from torch import Tensor, nn

from reptok.metrics import identification, psnr, ssim
from train.batches import seed_everything
from train.cli import add_train_args, stage_parser, train_config_from_args
from train.common import LossFn, Trainer
from train.data import build_dataset
from train.loop_config import TrainConfig, to_plain


@dataclass
class VaePreset:
    # diffusers AutoencoderKL.from_config keyword arguments (plain types: they go to config.json);
    # None: a preset for --finetune-decoder, whose architecture is the fine-tuned folder's.
    vae: dict[str, Any] | None
    train: TrainConfig
    kl_weight: float = 1e-6  # per latent element, against a per-pixel reconstruction loss
    mse_weight: float = 1.0  # L1 + this · MSE: L1 keeps flat colour areas flat, MSE the big errors small
    flip_p: float = 0.5  # horizontal flips: a generic prior for the latent space, free extra data
    # Train on random crops of this side (0: whole images). The VAE is convolutional, so it learns
    # from crops what it applies to whole images (SD-VAE trained at 256 px is used at 512): a 32 px
    # crop costs a quarter of a 64 px image (40 vs 9 img/s on one core for the cpu preset).
    crop_size: int = 32
    image_size: int = 64


def _vae_config(channels: Sequence[int], latent_channels: int = 4, layers: int = 1) -> dict[str, Any]:
    """An AutoencoderKL of len(channels) levels: downsampling factor 2 ** (len(channels) - 1)."""
    n = len(channels)
    return {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * n,
        "up_block_types": ["UpDecoderBlock2D"] * n,
        "block_out_channels": list(channels),
        "layers_per_block": layers,
        "latent_channels": latent_channels,
        "norm_num_groups": min(32, channels[0]),
        "sample_size": 64,
    }


PRESETS: dict[str, VaePreset] = {
    "test": VaePreset(
        vae=_vae_config((8, 16), latent_channels=4),
        train=TrainConfig(steps=4, batch_size=4, lr=1e-3, log_every=1, ckpt_every=2),
        image_size=32,
    ),
    # 2 CPU cores: blocks 32/64/128 (factor 4: 64×64×3 -> 16×16×4), ~2.7 M parameters. Measured on
    # the 579 held-out images of the three training styles, one core (2.6 s/step, beside another
    # job): 500 steps, 22 min: 20.4 dB, SSIM 0.815, 98.8 % identification; 2,000 steps, 89 min:
    # 21.1 dB, SSIM 0.850, 98.8 %. `--steps 500` gives 0.7 dB less ceiling. Measured again with nothing
    # else running: 0.43 s/step on one core beside the backbone, 0.25 s/step on both (2,000 steps: 15 / 8 min).
    "cpu": VaePreset(
        vae=_vae_config((32, 64, 128), latent_channels=4),
        train=TrainConfig(
            steps=2000,
            batch_size=32,
            lr=1e-3,
            warmup_steps=200,
            log_every=100,
            ckpt_every=500,
            ema_decay=0.999,
        ),
    ),
    # The decoder fine-tune (--finetune-decoder) of a "cpu" VAE on whole 64 px images. A VAE trained
    # on 32 px crops decodes whole images far worse than crops (GroupNorm statistics and the mid-block
    # attention see a different image): session 18, held-out, the shipped VAE gave 28.7 dB on 32 px
    # crops and 21.1 dB on whole images. A run of 600 steps (the last 200 decaying; 19 images/s on
    # both cores) gave 31.0 dB on whole images, its step-200 checkpoint 30.3 dB, and the default
    # tokenizer's reconstructions 18.28 / 18.26 dB through them (16.3 before): the recipe's 250 steps
    # (about 7 min on both cores; session 19's recipe run: 30.42 dB, 12.7 min on one core beside
    # other work) keep nearly all of it for a third of the time.
    "cpu-decoder": VaePreset(
        vae=None,
        train=TrainConfig(
            steps=250,
            batch_size=32,
            lr=2e-4,
            warmup_steps=50,
            decay_steps=100,
            log_every=50,
            ckpt_every=200,
            ema_decay=0.99,  # short run: an EMA of 0.999 would still hold half the starting decoder
        ),
        crop_size=0,
    ),
    # One GPU: the same latent shape, wider blocks and more steps (estimated, not yet run).
    "gpu": VaePreset(
        vae=_vae_config((64, 128, 256), latent_channels=4, layers=2),
        train=TrainConfig(
            steps=20000,
            batch_size=128,
            lr=5e-4,
            warmup_steps=500,
            log_every=200,
            ckpt_every=2000,
            ema_decay=0.9995,
        ),
    ),
}


class VaeModel(nn.Module):
    def __init__(self, vae: AutoencoderKL) -> None:
        super().__init__()
        self.vae = vae


def vae_loss(preset: VaePreset) -> LossFn:
    def loss_fn(
        model: VaeModel, batch: dict[str, Any], generator: torch.Generator
    ) -> tuple[Tensor, dict[str, float | Tensor]]:
        images = batch["image"]  # (B, 3, H, W) in [-1, 1]
        flip = torch.rand(images.shape[0], generator=generator) < preset.flip_p  # (B,)
        images = torch.where(flip.to(images.device)[:, None, None, None], images.flip(-1), images)
        if preset.crop_size:
            images = random_crop(images, preset.crop_size, generator)  # (B, 3, c, c)
        posterior = model.vae.encode(images).latent_dist
        eps = torch.randn(posterior.mean.shape, generator=generator).to(images)
        latent = posterior.mean + posterior.std * eps  # (B, C, h, w), the reparameterised sample
        recon = model.vae.decode(latent).sample  # (B, 3, H, W)
        l1 = (recon - images).abs().mean()
        mse = (recon - images).square().mean()
        kl = 0.5 * (posterior.mean.square() + posterior.var - 1.0 - posterior.logvar).mean()
        loss = l1 + preset.mse_weight * mse + preset.kl_weight * kl
        psnr = 10 * torch.log10(4.0 / mse.detach())  # images span 2 ([-1, 1]): peak² = 4
        return loss, {"l1": l1.detach(), "mse": mse.detach(), "kl": kl.detach(), "psnr": psnr}

    return loss_fn


def random_crop(images: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """A size×size crop at a random position per image: (B, 3, H, W) -> (B, 3, size, size)."""
    b, _, h, w = images.shape
    top = torch.randint(0, h - size + 1, (b,), generator=generator)
    left = torch.randint(0, w - size + 1, (b,), generator=generator)
    rows = (top[:, None] + torch.arange(size)).to(images.device)  # (B, size)
    cols = (left[:, None] + torch.arange(size)).to(images.device)  # (B, size)
    index = torch.arange(b, device=images.device)[:, None, None]
    return images.permute(0, 2, 3, 1)[index, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


@torch.no_grad()
def latent_scale(vae: AutoencoderKL, dataset: Any, batch_size: int = 256) -> float:
    """SD's scaling factor: 1 / std of the posterior means over the data set."""
    latents = []
    for start in range(0, len(dataset), batch_size):
        images = torch.stack(
            [dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))]
        )
        latents.append(vae.encode(images).latent_dist.mode().flatten())
    return float(1.0 / torch.cat(latents).std())


@torch.no_grad()
def heldout_metrics(
    vae: AutoencoderKL, data: str | Path, image_size: int, batch_size: int = 128
) -> dict[str, Any]:
    """PSNR, SSIM and identification of the VAE's own reconstructions (posterior mode) of the held-out
    split: the ceiling for every tokenizer whose flow runs in this latent space."""
    heldout = build_dataset(data, split="heldout", image_size=image_size)
    real = torch.stack([heldout[i]["image"] for i in range(len(heldout))])  # (N, 3, S, S)
    recon = torch.cat([
        vae.decode(vae.encode(real[i : i + batch_size]).latent_dist.mode()).sample.clamp(-1, 1)
        for i in range(0, len(real), batch_size)
    ])  # fmt: skip
    return {
        "n": len(real),
        "psnr": float(psnr(recon, real).mean()),
        "ssim": float(ssim(recon, real).mean()),
        "identification": float(identification(recon, real).float().mean()),
    }


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser, name = stage_parser(argv, PRESETS, "cpu", prog="train_vae.py", doc=__doc__)
    preset = PRESETS[name]
    parser.add_argument(
        "--image-size", type=int, default=preset.image_size, help=f"training image side ({preset.image_size})"
    )
    parser.add_argument("--kl-weight", type=float, default=preset.kl_weight, help="KL term weight")
    parser.add_argument(
        "--crop-size",
        type=int,
        default=preset.crop_size,
        help=f"random crop side, 0: whole images ({preset.crop_size})",
    )
    parser.add_argument(
        "--finetune-decoder", type=Path, default=None, metavar="FOLDER",
        help="train only the decoder of this diffusers VAE folder (encoder and scaling factor kept)",
    )  # fmt: skip
    add_train_args(parser, preset.train, out_default=None)
    return parser.parse_args(list(argv))


def main(argv: Sequence[str] | None = None) -> Path:
    """Train the VAE; returns the saved diffusers folder."""
    args = parse_args(sys.argv[1:] if argv is None else argv)
    preset = PRESETS[args.preset]
    preset = dataclasses.replace(
        preset, kl_weight=args.kl_weight, image_size=args.image_size, crop_size=args.crop_size
    )
    if preset.vae is None and args.finetune_decoder is None:
        raise ValueError(f"preset {args.preset} fine-tunes a decoder: give --finetune-decoder FOLDER")
    cfg = train_config_from_args(args)
    dataset = build_dataset(args.data, split="train", image_size=args.image_size)
    seed_everything(cfg.seed)
    if args.finetune_decoder is None:
        vae_config = {**preset.vae, "sample_size": args.image_size}
        vae = AutoencoderKL.from_config(vae_config)
        params = list(vae.parameters())
    else:
        vae = AutoencoderKL.from_pretrained(args.finetune_decoder, torch_dtype=torch.float32)
        vae_config = {k: v for k, v in vae.config.items() if not k.startswith("_")}
        vae.requires_grad_(False)
        decoder = [vae.post_quant_conv, vae.decoder] if vae.post_quant_conv is not None else [vae.decoder]
        params = [p.requires_grad_(True) for m in decoder for p in m.parameters()]
    model = VaeModel(vae)
    run_config = {"stage": "vae", "preset": args.preset, "data": str(Path(args.data).resolve()),
                  "vae": vae_config, "kl_weight": preset.kl_weight, "mse_weight": preset.mse_weight,
                  "flip_p": preset.flip_p, "crop_size": preset.crop_size, "image_size": args.image_size,
                  "finetune_decoder": None if args.finetune_decoder is None else str(args.finetune_decoder)}  # fmt: skip
    trainer = Trainer(cfg, args.out, model, params, run_config, resume=args.resume)
    trainer.print(
        f"VAE | preset {args.preset} | {len(dataset)} images | "
        f"{sum(p.numel() for p in params) / 1e6:.2f}M trained parameters | blocks {vae_config['block_out_channels']}"
        + ("" if args.finetune_decoder is None else f" | decoder only, from {args.finetune_decoder}")
    )
    trainer.fit(trainer.batches(dataset), vae_loss(preset))

    out = args.out / "vae"
    if trainer.is_main and trainer.step == cfg.steps:
        vae = trainer.ema.to("cpu").vae.eval()
        if args.finetune_decoder is None:  # a fine-tuned decoder keeps the encoder's latents and scale
            vae.register_to_config(scaling_factor=latent_scale(vae, dataset), shift_factor=0.0)
        scale = vae.config.scaling_factor
        vae.save_pretrained(out)
        info = {"trained_with": "train/train_vae.py", "preset": args.preset, "data": args.data,
                "train_images": len(dataset), **trainer.summary(), "scaling_factor": scale, "loss": "L1 + MSE + KL", "kl_weight": preset.kl_weight,
                "crop_size": preset.crop_size, "finetuned_decoder_of": run_config["finetune_decoder"],
                "heldout": heldout_metrics(vae, args.data, args.image_size)}  # fmt: skip
        (out / "training.json").write_text(json.dumps(to_plain(info), indent=2) + "\n")
        trainer.print(f"saved {out} (scaling factor {scale:.4f})")
    trainer.accelerator.wait_for_everyone()
    return out


if __name__ == "__main__":
    try:
        main()
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        sys.exit(f"error: {err}")
