"""What stage A (train/train_tokenizer.py) starts from: the encoder (an in-house backbone folder, a
saved RepTok model's backbone, or a timm name), the image space the flow runs in, an --init model's
weights, and the per-image tensors it computes once instead of every step."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from reptok.decoder import Decoder, ImageSpace, ImageSpaceConfig
from reptok.encoder import ENCODER_PRESETS, Encoder
from reptok.pipeline import RepTok
from train.checkpoint import fingerprint, save_atomic
from train.pretrain_backbone import load_encoder


def build_encoder(
    backbone: str, encoder_preset: str, lam: float, pretrained: bool
) -> tuple[Encoder, str, dict[str, Any]]:
    """Encoder, where its weights came from, and what pre-training said of it: {"method": dino/mae/
    clip/random/timm, "knn": held-out k-NN accuracies or None}."""
    folder = Path(backbone)
    if is_reptok_model(folder):
        return encoder_from_model(folder, lam)
    if folder.is_dir():
        encoder, meta = load_encoder(folder, cosine_weight=lam)
        method = str(meta.get("method", "unknown method"))
        knn = meta.get("knn") or {}
        about = {
            "method": method,
            "knn": {k: knn[k] for k in ("category", "subcategory") if k in knn} or None,
        }
        return encoder, f"{folder} ({method})", about
    if ("/" in backbone or "\\" in backbone) and not backbone.startswith(("hf-hub:", "hf_hub:")):
        raise FileNotFoundError(f"backbone folder not found: {backbone}")
    config = ENCODER_PRESETS[encoder_preset].replace(
        backbone=backbone, pretrained=pretrained, cosine_weight=lam
    )
    return (
        Encoder(config),
        f"timm {backbone} ({'pretrained' if pretrained else 'random init'})",
        {
            "method": "timm",
            "knn": None,
        },
    )


def is_reptok_model(folder: Path) -> bool:
    config = folder / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("format") == "reptok"


def encoder_from_model(folder: Path, lam: float) -> tuple[Encoder, str, dict[str, Any]]:
    """The SSL backbone of a saved RepTok model (e.g. a shipped one in assets/models), with its
    original [cls] embedding: what the model's own stage A started from, not its adapted token."""
    model = RepTok.from_pretrained(folder)
    encoder = model.encoder
    encoder.config = encoder.config.replace(cosine_weight=lam)
    with torch.no_grad():
        encoder.backbone.cls_token.copy_(encoder.frozen_cls_token)
    encoder.freeze()  # the cls embedding trains again unless λ = inf
    info = model.config.info
    source = info.get("backbone_source") or info.get("backbone", "unknown")
    about = {"method": str(info.get("backbone_method", "unknown method")), "knn": info.get("backbone_knn")}
    return encoder, f"{folder} backbone <- {source}", about  # source names the method already


def stage_a_steps(info: dict[str, Any]) -> int:
    """Stage A optimizer steps behind a saved model, across the --init runs it continues."""
    return int(info.get("total_steps") or info.get("steps") or 0)


@torch.no_grad()
def start_from(init: RepTok, encoder: Encoder, decoder: Decoder) -> None:
    """--init: copy a saved model's adapted [cls] embedding and decoder weights (strictly: the
    shapes must match) into the freshly built stage-A modules. The one exception: a decoder given a
    token map the saved one lacks keeps its fresh map, which starts closed (zero embedding)."""
    if not torch.equal(encoder.frozen_cls_token, init.encoder.frozen_cls_token.to(encoder.frozen_cls_token)):
        raise ValueError("--init: the backbone's original [cls] embedding is not the saved model's")
    encoder.backbone.cls_token.copy_(init.encoder.backbone.cls_token)
    state = init.decoder.state_dict()
    if decoder.config.token_map_channels and not init.decoder.config.token_map_channels:
        state |= {k: v for k, v in decoder.state_dict().items() if k.startswith("token_map")}
    decoder.load_state_dict(state)


@torch.no_grad()
def encode_dataset(
    encode: Callable[[Tensor], Tensor],
    dataset: Any,
    batch_size: int = 128,
    device: torch.device | str = "cpu",
) -> Tensor:
    """`encode` (images (b, 3, H, W) in [-1, 1] -> (b, ...)) of every item, in dataset order, on
    `device` (where `encode`'s module is).

    Stage A does not augment and its VAE and backbone weights are frozen, so an image's latent and
    its original-backbone token are the same every epoch: computed once, they save the VAE encoder's
    pass (about a fifth of a CPU step) and the cosine anchor's frozen pass."""
    chunks = []
    for start in range(0, len(dataset), batch_size):
        images = torch.stack(
            [dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))]
        )  # (b, 3, H, W)
        chunks.append(encode(images.to(device)))
    return torch.cat(chunks)


def cached_encoding(
    cache_dir: Path | None,
    what: str,
    weights: dict[str, Tensor],
    dataset: Any,
    make: Callable[[], Tensor],
    **about: Any,
) -> Tensor:
    """`make()` (an `encode_dataset` of `dataset`), kept in `cache_dir` for the next stage-A run that
    would compute the same thing: every run of a recipe encodes the same images with the same VAE,
    and the runs on one backbone share its anchors (about a minute each on one core). The file is
    named by a digest of what the result depends on: the `weights` it reads, the images in dataset
    order and `about` (plain settings that are not weights, e.g. the latent scale, the device and
    thread count, which can change the last bits). It holds exactly what `make` returned, so a run
    with the cache trains bitwise as one without it."""
    if cache_dir is None:
        return make()
    images = hashlib.sha256()
    for i in range(len(dataset)):
        images.update(dataset[i]["image"].numpy().tobytes())
    key = {"what": what, "weights": fingerprint(weights), "images": images.hexdigest(), "n": len(dataset)}
    digest = hashlib.sha256(json.dumps(key | about, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir) / f"{what}-{digest}.pt"
    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=True)
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    save_atomic(value.cpu(), path)
    return value


def frozen_tokens(encoder: Encoder) -> Callable[[Tensor], Tensor]:
    """images -> (b, 1, D): the original backbone's tokens (the cosine anchor's target)."""

    def encode(images: Tensor) -> Tensor:
        # The original embedding itself, not the frozen path's (trained + (original - trained)): a
        # resumed run then computes bitwise the anchors its first call did.
        cls_token, was_training = encoder.backbone.cls_token, encoder.training
        adapted = cls_token.detach().clone()
        cls_token.data.copy_(encoder.frozen_cls_token)
        try:
            return encoder.eval()(images).z  # (b, 1, D)
        finally:
            cls_token.data.copy_(adapted)
            encoder.train(was_training)

    return encode


def _saved_space(folder: Path) -> dict[str, Any]:
    return json.loads((folder / "config.json").read_text()).get("image_space") or {"kind": "pixel"}


def saved_model_vae(folder: Path) -> str | None:
    """The VAE a saved RepTok model's flow runs in, as --vae takes it: its folder (resolved against
    the model folder, e.g. "vae" or "../reptok-emoji/vae") or its hub name; None in pixel space."""
    space = _saved_space(folder)
    if space.get("kind") != "vae" or space.get("vae") is None:
        return None
    local = folder / space["vae"]
    return str(local) if local.is_dir() else str(space["vae"])


def resolve_image_space(
    space: str | None, vae: str | None, *, preset_space: str, init: Path | None, backbone: str | None
) -> tuple[str, str | None]:
    """Where stage A's flow runs (pixel | vae) and in which VAE, where the flags leave it open.

    --space defaults to the --init model's space, else to the preset's (the CPU presets' decoders
    are sized for the in-house VAE's 16×16 latent: on 64 px pixels they would see 16× the patches).
    --vae defaults to the VAE of the --init model, else of a saved model given as --backbone: with
    `--backbone assets/models/reptok-emoji` alone, stage A runs in the latent that model was trained in.
    """
    saved = [Path(p) for p in (init, backbone) if p is not None and is_reptok_model(Path(p))]
    if space is None:
        space = str(_saved_space(init)["kind"]) if init is not None else preset_space
    if space == "vae" and vae is None:
        vae = next((v for v in map(saved_model_vae, saved) if v is not None), None)
        if vae is None:
            raise ValueError(
                "the flow runs in a VAE latent (--space vae, or the preset's space): pass --vae (a hub "
                "name, a saved AutoencoderKL folder such as assets/models/reptok-emoji/vae, or a .json "
                "config), a saved model with a VAE as --backbone, or --space pixel"
            )
    return space, vae


def build_image_space(space: str, vae: str | None) -> tuple[ImageSpace, ImageSpaceConfig, int, int]:
    """ImageSpace, its config, latent channels and the pixel/latent downsampling factor."""
    if space == "pixel":
        return ImageSpace(ImageSpaceConfig()), ImageSpaceConfig(), 3, 1
    if vae is None:
        raise ValueError(
            "--space vae needs --vae (a hub name, a saved AutoencoderKL folder, or a .json config)"
        )
    from diffusers import AutoencoderKL

    if vae.endswith(".json"):
        vae_config = json.loads(Path(vae).read_text())
        model, config = (
            AutoencoderKL.from_config(vae_config),
            ImageSpaceConfig(kind="vae", vae_config=vae_config),
        )
    else:
        model = AutoencoderKL.from_pretrained(vae)
        source = str(Path(vae).resolve()) if Path(vae).is_dir() else vae
        config = ImageSpaceConfig(kind="vae", vae=source)
    config = config.replace(
        scale=float(model.config.scaling_factor), shift=float(model.config.shift_factor or 0.0)
    )
    factor = 2 ** (len(model.config.block_out_channels) - 1)
    return ImageSpace(config, model), config, int(model.config.latent_channels), factor
