"""Export trained RepTok models into the app's assets: fp16 weights, shared backbones and VAEs, manifold.

    python train/export.py --model reptok-emoji=runs/emoji/B-text/model \\
        --model reptok-emoji-lam0=runs/emoji/A-lam0/model --manifold-only runs/emoji/A-lam10/model \\
        --data data/emoji64.npz --out assets

writes

    assets/models/<name>/config.json + tokenizer/generator safetensors (fp16; [cls] embeddings fp32)
    assets/models/<name>/backbone.safetensors   only in the first model with that backbone; every
                                                later one references it ("../<first>/backbone...")
    assets/models/<name>/vae/                   VAE-space models: the AutoencoderKL in fp16, only in
                                                the first model with that VAE; every later one
                                                references it ("../<first>/vae")
    assets/models/<name>/metrics.json           copied from the run folder, if evaluate.py wrote one
    assets/manifold.npz                         held-out tokens + 2-D UMAP per λ of the main backbone

The first --model is the main one: the manifold's λ settings are the models (and --manifold-only
runs) that share its backbone, plus λ = inf from its frozen [cls] embedding when no run has it.
Every exported model's own held-out tokens go into the file too, for the Backbones tab.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from tqdm import tqdm

from reptok.encoder import BACKBONE_METHODS
from reptok.manifold import fit_2d, lambda_label, save_manifold
from reptok.pipeline import RepTok
from train.cli import add_guidance_interval_args, guidance_interval_overrides
from train.data import build_dataset

LAMBDA_INF = lambda_label(math.inf)


def backbone_display(info: dict[str, Any], token_dim: int) -> str:
    """'CLIP-style ViT, 192-d token' from a stage-A info block; the training path is kept apart."""
    name = BACKBONE_METHODS.get(str(info.get("backbone_method")))
    return f"{name} ViT, {token_dim}-d token" if name else str(info.get("backbone", "unknown"))


@dataclass
class Exported:
    name: str
    source: Path
    model: RepTok
    backbone_sha256: str
    lam: str  # λ label, as the app's manifold selector shows it


def _named(spec: str) -> tuple[str, Path]:
    """'name=folder' -> (name, folder); a bare folder is named after itself."""
    name, sep, folder = spec.partition("=")
    if not sep:
        name, folder = Path(spec).name, spec
    if not name or "/" in name or "\\" in name or name.startswith("."):
        raise argparse.ArgumentTypeError(f"bad model name {name!r}: a plain folder name is needed")
    return name, Path(folder)


def export_model(
    name: str,
    source: Path,
    models_dir: Path,
    backbones: dict[str, Path],
    sampling: dict[str, Any],
    *,
    main: bool = False,
    vaes: dict[str, Path] | None = None,
    tokenizer_only: bool = False,
) -> Exported:
    """Write one model in fp16 into models_dir/name; reference an already-written equal backbone
    (`backbones`) and VAE folder (`vaes`), both keyed by the content hash of their fp16 weights and
    filled in here. `sampling`: SamplingConfig fields to ship as the model's defaults (e.g. fewer
    decoder steps), for a model not yet evaluated: one whose folder has a metrics.json (a shipped
    model shipped again) keeps its own, since its metrics were measured with them.
    `main`: the app's default model (info["main"]). `tokenizer_only`: ship the tokenizer without its
    generators (an ablation row that the app only reconstructs with: assets/ stays under its size);
    its metrics.json, measured with them, says which were left out ("generators_not_shipped")."""
    vaes = {} if vaes is None else vaes
    model = RepTok.from_pretrained(source)
    dropped = [
        g for g in ("class_generator", "text_generator") if tokenizer_only and getattr(model, g) is not None
    ]
    for generator in dropped:
        setattr(model, generator, None)
        setattr(model.config, generator, None)
    if "text_generator" in dropped:
        model.config.text_encoder = None
    evaluated = (source / "metrics.json").is_file()
    if sampling and evaluated:
        print(f"{name}: keeps its sampling defaults (its metrics.json was measured with them)")
    else:
        model.config.sampling = model.config.sampling.replace(**sampling)
    out = models_dir / name
    if out.exists():
        shutil.rmtree(out)  # a re-export replaces the folder whole, so no stale file survives
    info = model.config.info
    model.config.info = {
        **info,
        "name": name,
        "main": main,
        "backbone": backbone_display(info, model.token_dim),
        "backbone_source": info.get("backbone_source", info.get("backbone")),
    }
    sha256 = model.backbone_sha256(torch.float16)  # what save_pretrained stores and checks
    vae_sha256 = model.vae_sha256(torch.float16)  # None: no VAE stored (pixel space, a hub name)
    backbone_file = vae_folder = None
    if sha256 in backbones:
        backbone_file = (Path("..") / backbones[sha256].relative_to(models_dir)).as_posix()
    if vae_sha256 in vaes:
        vae_folder = (Path("..") / vaes[vae_sha256].relative_to(models_dir)).as_posix()
    model.save_pretrained(out, backbone_file=backbone_file, vae_folder=vae_folder)
    backbones.setdefault(sha256, out / "backbone.safetensors")
    if vae_sha256 is not None:
        vaes.setdefault(vae_sha256, out / "vae")
    if evaluated:
        metrics = json.loads((source / "metrics.json").read_text())
        if dropped:
            metrics["generators_not_shipped"] = dropped
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return Exported(name, source, model, sha256, lambda_label(model.config.encoder.cosine_weight))


def export_features(source: Path, out: Path) -> Path:
    """A pretrain_backbone.py folder (backbone.safetensors + config.json) as fp16, the way models ship."""
    state = load_file(str(source / "backbone.safetensors"))
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_file({k: v.to(torch.float16) if v.is_floating_point() else v for k, v in state.items()},
              str(out / "backbone.safetensors"))  # fmt: skip
    shutil.copy2(source / "config.json", out / "config.json")
    return out


@torch.inference_mode()
def encode_all(model: RepTok, images: torch.Tensor, batch_size: int, *, frozen: bool = False) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] -> (N, D) tokens; `frozen`: the original [cls] embedding's tokens."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size]
        if frozen:
            z = model.encoder(model.preprocess(batch), return_frozen=True).z_frozen  # (B, 1, D)
        else:
            z = model.encode(batch)  # (B, 1, D)
        out.append(z.reshape(len(batch), -1).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, model.token_dim), np.float32)


def build_manifold(
    main: Exported,
    exported: Sequence[Exported],
    extra: Sequence[RepTok],
    data: str | Path,
    out: Path,
    *,
    split: str,
    max_points: int,
    batch_size: int,
    seed: int,
) -> Path:
    dataset = build_dataset(data, split=split, image_size=main.model.image_size)  # type: ignore[arg-type]
    picks = np.random.default_rng(seed).permutation(len(dataset))[:max_points]
    picks.sort()
    items = [dataset[int(i)] for i in picks]
    images = torch.stack([item["image"] for item in items])  # (N, 3, H, W)
    names = [str(item["name"]) for item in items]
    class_names = list(getattr(dataset, "class_names", []))
    categories = [class_names[int(item["label"])] if class_names else "" for item in items]

    model_tokens = {e.name: encode_all(e.model, images, batch_size) for e in tqdm(exported, desc="tokens")}
    # λ settings: runs on the main backbone (a λ once), then the frozen token if no run is λ = inf. At
    # the main model's λ its same-budget twin, where one ships, stands in (as in the app's Backbones
    # tab): the main model may have trained longer than the rows it is mapped beside.
    by_lambda: dict[str, np.ndarray] = {}
    owners: dict[str, str] = {}  # λ -> the shipped model whose tokens these are
    for e in sorted(exported, key=lambda e: e is main):  # stable: the main model last
        if e.backbone_sha256 == main.backbone_sha256 and e.lam not in by_lambda:
            by_lambda[e.lam], owners[e.lam] = model_tokens[e.name], e.name
    for model in extra:
        lam = lambda_label(model.config.encoder.cosine_weight)
        if lam not in by_lambda:
            by_lambda[lam] = encode_all(model, images, batch_size)
    if LAMBDA_INF not in by_lambda:
        by_lambda[LAMBDA_INF] = encode_all(main.model, images, batch_size, frozen=True)
    order = sorted(by_lambda, key=lambda lam: float(lam))  # "inf" parses as float('inf')
    settings = {
        lam: {"xy": fit_2d(by_lambda[lam], seed=seed), "tokens": by_lambda[lam]}
        for lam in tqdm(order, desc="UMAP")
    }
    return save_manifold(
        out,
        names=names,
        categories=categories,
        settings=settings,
        model_tokens=model_tokens,
        setting_models={lam: owners[lam] for lam in order if lam in owners},
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model", dest="models", action="append", type=_named, required=True, metavar="NAME=FOLDER",
        help="a trained model folder to ship, as NAME=FOLDER (repeat; the first is the main model)",
    )  # fmt: skip
    p.add_argument(
        "--tokenizer-only", action="append", default=[], metavar="NAME",
        help="ship this --model's tokenizer alone, without its generators (repeat)",
    )  # fmt: skip
    p.add_argument(
        "--manifold-only", action="append", type=Path, default=[], metavar="FOLDER",
        help="a stage A run on the main backbone whose tokens join the λ manifold, not shipped as a model",
    )  # fmt: skip
    p.add_argument("--data", required=True, help="the data the manifold's points come from (.npz or folder)")
    p.add_argument("--out", type=Path, default=Path("assets"), help="assets folder (default assets)")
    p.add_argument(
        "--split", choices=["heldout", "train", "all"], default="heldout", help="manifold points (heldout)"
    )
    p.add_argument("--max-points", type=int, default=4000, help="at most this many manifold points")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="point subset and UMAP seed")
    p.add_argument("--no-manifold", action="store_true", help="export the weights only")
    p.add_argument(
        "--features", type=Path, metavar="FOLDER",
        help="the in-house backbone whose features evaluate.py's Fréchet distances use: shipped as "
        "OUT/features in fp16, so the model card's numbers can be re-measured from assets/ alone",
    )  # fmt: skip
    p.add_argument("--decode-steps", type=int, help="default decoder steps shipped in each config")
    p.add_argument("--decode-sampler", choices=["euler", "heun"], help="default decoder sampler shipped")
    p.add_argument(
        "--decode-temperature", type=float, help="default decoder noise scale τ shipped (decode_sweep.py)"
    )
    p.add_argument(
        "--decode-shift", type=float, help="default decoder time-grid shift shipped (decode_sweep.py)"
    )
    p.add_argument(
        "--cfg-scale", type=float, help="default classifier-free guidance scale shipped (guidance_sweep.py)"
    )
    p.add_argument(
        "--generate-temperature", type=float,
        help="default generator noise scale T shipped (guidance_sweep.py --temperature)",
    )  # fmt: skip
    add_guidance_interval_args(p, "shipped (guidance_sweep.py --cfg-interval)")
    args = p.parse_args(argv)
    names = [name for name, _ in args.models]
    if len(set(names)) != len(names):
        p.error(f"model names must be unique, got {names}")
    if unknown := sorted(set(args.tokenizer_only) - set(names)):
        p.error(f"--tokenizer-only names no --model: {unknown}")
    return args


def main(argv: Sequence[str] | None = None) -> list[Path]:
    args = parse_args(argv)
    start = time.perf_counter()
    models_dir = args.out / "models"
    models_dir.mkdir(parents=True, exist_ok=True)
    backbones: dict[str, Path] = {}
    vaes: dict[str, Path] = {}
    sampling = {
        key: value
        for key, value in {
            "decode_steps": args.decode_steps,
            "decode_sampler": args.decode_sampler,
            "decode_temperature": args.decode_temperature,
            "decode_shift": args.decode_shift,
            "cfg_scale": args.cfg_scale,
            "generate_temperature": args.generate_temperature,
        }.items()
        if value is not None
    } | guidance_interval_overrides(args)
    exported = [
        export_model(
            name,
            folder,
            models_dir,
            backbones,
            sampling,
            main=i == 0,
            vaes=vaes,
            tokenizer_only=name in args.tokenizer_only,
        )
        for i, (name, folder) in enumerate(args.models)
    ]
    for e in exported:
        print(f"{e.name}: λ = {e.lam}, backbone {e.backbone_sha256[:8]} <- {e.source}")
    if args.features:
        print(f"features: {export_features(args.features, args.out / 'features')} <- {args.features}")
    if not args.no_manifold:
        extra = [RepTok.from_pretrained(folder) for folder in args.manifold_only]
        path = build_manifold(
            exported[0], exported, extra, args.data, args.out / "manifold.npz",
            split=args.split, max_points=args.max_points, batch_size=args.batch_size, seed=args.seed,
        )  # fmt: skip
        print(f"manifold: {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    total = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
    print(f"{args.out}: {total / 2**20:.1f} MiB in all, {time.perf_counter() - start:.0f} s")
    return [models_dir / e.name for e in exported]


if __name__ == "__main__":
    main()
