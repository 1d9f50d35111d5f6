"""Command line: python -m reptok {info,init,reconstruct,sample,interpolate,convert-official,fetch-official}.

With no --model, the embedded default in assets/models/ is used once it exists; --model takes a
model folder or a Hub repo id ("user/name", through huggingface_hub's cache; see reptok.hub).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from PIL import Image

    from reptok.pipeline import RepTok

ENCODER_CHOICES = ("test", "vit-s8-64px")  # presets that build without the hub
DECODER_CHOICES = ("test", "s4-64px", "b4-64px")
DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "assets" / "models" / "reptok-emoji"


def _load(path: str | None, device: str):
    from reptok.hub import looks_like_repo_id
    from reptok.pipeline import RepTok

    model_dir = Path(path) if path else DEFAULT_MODEL
    if (model_dir / "config.json").is_file():
        return RepTok.from_pretrained(model_dir, device=device)
    if path and not model_dir.exists() and looks_like_repo_id(path):
        try:
            return RepTok.from_pretrained(path, device=device)
        except (FileNotFoundError, ValueError) as err:
            raise SystemExit(f"error: {err}") from err
    hint = "" if path else " (the embedded default is not there yet; pass --model PATH)"
    raise SystemExit(f"error: no RepTok model at {model_dir}{hint}")


def _out_dir(path: str) -> Path:
    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    return out


def cmd_info(args: argparse.Namespace) -> int:
    model = _load(args.model, args.device)
    cfg = model.config
    enc = cfg.encoder
    print(f"model:        {model.source}")
    print(f"backbone:     {enc.backbone} {enc.backbone_kwargs or ''} (file: {cfg.backbone_file})")
    lam = "inf (frozen token)" if enc.cosine_weight == float("inf") else f"{enc.cosine_weight:g}"
    print(f"cosine λ:     {lam}")
    d = model.token_dim
    print(f"latent:       1 token × {d} floats = {4 * d} bytes (fp32), {2 * d} bytes (fp16)")
    size = model.image_size
    print(f"images:       {size}×{size} RGB ({size * size * 3} bytes); decoder space: {cfg.image_space.kind}")
    for name, count in model.num_parameters().items():
        print(f"{name + ':':<18}{count / 1e6:8.2f} M parameters")
    if cfg.class_names:
        print(
            f"classes:      {len(cfg.class_names)}: {', '.join(cfg.class_names[:12])}{' ...' * (len(cfg.class_names) > 12)}"
        )
    print(f"text:         {cfg.text_encoder.name if cfg.text_generator and cfg.text_encoder else 'none'}")
    s = cfg.sampling
    print(f"sampling:     decoder {s.decode_sampler} × {s.decode_steps} (τ {s.decode_temperature}), generator {s.generate_sampler} × {s.generate_steps} (T {s.generate_temperature}), "
          f"cfg {s.cfg_scale} in {list(s.cfg_interval)}"
          + (f" (text: {list(s.text_cfg_interval)})" if s.text_cfg_interval is not None else ""))  # fmt: skip
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """A randomly initialised model from presets, saved like any other (for trying the API/CLI,
    or as the starting point of training). Its reconstructions are noise until it is trained."""
    from reptok.decoder import DECODER_PRESETS
    from reptok.encoder import ENCODER_PRESETS, Encoder
    from reptok.generator import MIXER_PRESETS, TEXT_PRESETS
    from reptok.pipeline import RepTok, RepTokConfig
    from reptok.text import TextEncoderConfig

    torch.manual_seed(args.seed)
    enc = ENCODER_PRESETS[args.encoder]
    dec = DECODER_PRESETS[args.decoder].replace(token_dim=Encoder(enc).dim)
    mixer = MIXER_PRESETS[args.mixer].replace(token_dim=dec.token_dim, num_classes=len(args.classes))
    text = TEXT_PRESETS[args.text].replace(token_dim=dec.token_dim, text_dim=384)
    config = RepTokConfig(
        encoder=enc, decoder=dec, class_generator=mixer, text_generator=text, text_encoder=TextEncoderConfig(),
        class_names=list(args.classes), info={"name": "random init", "trained": False},
    )  # fmt: skip
    out = RepTok.from_config(config).save_pretrained(args.out)
    print(f"wrote a randomly initialised model to {out}")
    return 0


def cmd_convert_official(args: argparse.Namespace) -> int:
    """The authors' reptok-xl-600k-ImageNet.ckpt -> a model folder of this library (no download)."""
    from reptok.official import convert_official

    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    try:
        out = convert_official(args.checkpoint, args.out, vae=args.vae, dtype=dtype)
    except (FileNotFoundError, ValueError) as err:
        raise SystemExit(f"error: {err}") from err
    print(f"wrote {out}")
    return 0


def cmd_fetch_official(args: argparse.Namespace) -> int:
    """Download the authors' checkpoint (resumable, verified), convert it once; cached after that."""
    from reptok.download import DownloadError, default_official_dir, ensure_official

    out = Path(args.out).expanduser() if args.out else default_official_dir()
    if (out / "config.json").is_file():
        print(f"{out} is already there (delete it to fetch again)")
        return 0
    dtype = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[args.dtype]
    try:
        out = ensure_official(
            out, url=args.url, checkpoint=args.checkpoint, vae=args.vae, dtype=dtype,
            keep_checkpoint=args.keep_checkpoint,
        )  # fmt: skip
    except DownloadError as err:
        raise SystemExit(f"error: {err}") from err
    print(f"wrote {out}")
    print(
        f"use it: python -m reptok info --model {out}; in the app: REPTOK_MODELS_DIR={out.parent} python app.py"
    )
    return 0


def _token(model: RepTok, image: Image.Image, refine_steps: int, seed: int) -> torch.Tensor:
    """The image's token (1, 1, D): the encoder's, or refined on the image (reptok.inversion)."""
    if not refine_steps:
        return model.encode(image)
    from reptok.inversion import RefineConfig, refine

    return refine(model, image, config=RefineConfig(steps=refine_steps, seed=seed))


def cmd_reconstruct(args: argparse.Namespace) -> int:
    from reptok.images import ImageLoadError, load_image

    model = _load(args.model, args.device)
    out = _out_dir(args.out_dir)
    failed = 0
    for path in args.images:
        try:
            image = load_image(path)
        except ImageLoadError as err:
            print(f"skipped {path}: {err}", file=sys.stderr)
            failed += 1
            continue
        z = _token(model, image, args.refine_steps, args.seed)
        recon = model.decode(
            z, steps=args.steps, sampler=args.sampler, temperature=args.temperature, seed=args.seed
        )[0]
        target = out / f"{Path(path).stem}.png"
        recon.save(target)
        print(target)
    return 1 if failed else 0


def cmd_sample(args: argparse.Namespace) -> int:
    model = _load(args.model, args.device)
    out = _out_dir(args.out_dir)
    kwargs = {
        "cfg_scale": args.cfg_scale,
        "steps": args.steps,
        "temperature": args.temperature,
        "decode_steps": args.decode_steps,
        "seed": args.seed,
    }
    if args.cfg_interval is not None:
        kwargs["cfg_interval"] = tuple(args.cfg_interval)
    if args.class_ is not None:
        try:
            model.class_id(args.class_)
        except ValueError as err:
            raise SystemExit(f"error: {err}") from err
        images = model.sample(labels=[args.class_] * args.n, **kwargs)
        stem = "class-" + "".join(c if c.isalnum() else "_" for c in str(args.class_)).strip("_")
    else:
        images = model.sample(prompts=[args.prompt] * args.n, **kwargs)
        stem = "prompt-" + (
            "".join(c if c.isalnum() else "_" for c in args.prompt)[:40].strip("_") or "empty"
        )
    for i, image in enumerate(images):
        target = out / f"{stem}-{args.seed + i:04d}.png"
        image.save(target)
        print(target)
    return 0


def cmd_interpolate(args: argparse.Namespace) -> int:
    from reptok.images import ImageLoadError, load_image
    from reptok.sampling import seeded_noise

    model = _load(args.model, args.device)
    out = _out_dir(args.out_dir)
    try:
        image_a, image_b = load_image(args.image_a), load_image(args.image_b)
    except ImageLoadError as err:
        raise SystemExit(f"error: {err}") from err
    z_a, z_b = (_token(model, image, args.refine_steps, args.seed) for image in (image_a, image_b))
    weights = torch.linspace(0.0, 1.0, args.frames)
    tokens = model.interpolate(z_a, z_b, weights, mode=args.mode)  # (frames, 1, D)
    c, n = model.config.decoder.in_channels, model.config.decoder.input_size
    noise = seeded_noise((1, c, n, n), args.seed).expand(
        args.frames, -1, -1, -1
    )  # same noise: only z changes
    frames = model.decode(tokens, noise=noise, steps=args.steps)
    for i, frame in enumerate(frames):
        target = out / f"frame-{i:03d}.png"
        frame.save(target)
        print(target)
    frames[0].save(out / "interpolation.gif", save_all=True, append_images=frames[1:], duration=120, loop=0)
    print(out / "interpolation.gif")
    return 0


def _refine_steps_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--refine-steps", type=int, default=0,
        help="refine each token on its image first: gradient steps on the decoder's loss (0: the encoder's token)",
    )  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reptok", description="RepTok: an image as one token.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--model", help="model folder (config.json + safetensors); default: the embedded model"
    )
    common.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("info", parents=[common], help="components, parameter counts, latent size, backbone")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("init", help="write a randomly initialised model built from presets")
    p.add_argument("--out", required=True, help="folder to write the model to")
    p.add_argument("--encoder", default="test", choices=sorted(ENCODER_CHOICES), help="encoder preset")
    p.add_argument("--decoder", default="test", choices=sorted(DECODER_CHOICES), help="decoder preset")
    p.add_argument("--mixer", default="test", help="class generator preset")
    p.add_argument("--text", default="test", help="text generator preset")
    p.add_argument("--classes", nargs="+", default=["class-0", "class-1", "class-2"], help="class names")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("convert-official", help="convert the official RepTok-XL ImageNet checkpoint")
    p.add_argument("checkpoint", help="reptok-xl-600k-ImageNet.ckpt (Lightning; read with weights_only)")
    p.add_argument(
        "--out", required=True, help="model folder to write, e.g. assets/models/reptok-xl-imagenet256"
    )
    p.add_argument(
        "--vae",
        choices=["hub", "checkpoint"],
        default="hub",
        help="hub: name stabilityai/sd-vae-ft-mse (loaded on first use); checkpoint: save the checkpoint's copy",
    )
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    p.set_defaults(func=cmd_convert_official)

    p = sub.add_parser(
        "fetch-official", help="download the official RepTok-XL checkpoint and convert it (once; cached)"
    )
    p.add_argument(
        "--out",
        help="model folder to write (default: $REPTOK_MODELS_DIR/ or checkpoints/ + reptok-xl-imagenet256)",
    )
    p.add_argument("--url", help="where to download the checkpoint from (default: the authors' URL)")
    p.add_argument(
        "--checkpoint", help="where the .ckpt is written (default: next to --out); an existing file is used"
    )
    p.add_argument("--keep-checkpoint", action="store_true", help="keep the .ckpt after converting it")
    p.add_argument(
        "--vae", choices=["hub", "checkpoint"], default="hub",
        help="hub: stabilityai/sd-vae-ft-mse through diffusers on first use; checkpoint: the checkpoint's copy",
    )  # fmt: skip
    p.add_argument("--dtype", choices=["float16", "bfloat16", "float32"], default="float16")
    p.set_defaults(func=cmd_fetch_official)

    p = sub.add_parser("reconstruct", parents=[common], help="encode each image to one token and decode it")
    p.add_argument("images", nargs="+", help="input images (PNG, JPEG, WebP, GIF, BMP)")
    p.add_argument("--out-dir", required=True, help="one PNG per input is written here, same file stem")
    p.add_argument("--steps", type=int, help="decoder steps (default: the model's)")
    p.add_argument("--sampler", choices=["euler", "heun"], help="decoder sampler (default: the model's)")
    p.add_argument("--temperature", type=float, help="decoder noise scale τ (default: the model's)")
    _refine_steps_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_reconstruct)

    p = sub.add_parser("sample", parents=[common], help="sample images by class or by text prompt")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--class", dest="class_", help="class name or id")
    which.add_argument("--prompt", help="text prompt")
    p.add_argument("--n", type=int, default=4, help="number of images")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--cfg-scale", type=float, help="classifier-free guidance scale (default: the model's)")
    p.add_argument(
        "--cfg-interval", type=float, nargs=2, metavar=("LO", "HI"), help="guide only for t in [LO, HI]"
    )
    p.add_argument("--steps", type=int, help="generator steps")
    p.add_argument("--temperature", type=float, help="generator noise scale T (default: the model's)")
    p.add_argument("--decode-steps", type=int, help="decoder steps")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser("interpolate", parents=[common], help="frames between the tokens of two images")
    p.add_argument("image_a")
    p.add_argument("image_b")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--mode", choices=["slerp", "lerp"], default="slerp")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--steps", type=int, help="decoder steps")
    _refine_steps_arg(p)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_interpolate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "n", 1) < 1 or getattr(args, "frames", 2) < 2:
        raise SystemExit("error: --n must be ≥ 1 and --frames ≥ 2")
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
