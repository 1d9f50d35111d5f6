"""A RepTok model folder on disk: which weights go in which file, in which dtype, checked how.

    config.json                    every component's config, plain types (reptok.model_config)
    backbone.safetensors           the frozen ViT weights; models that share a backbone
                                   reference one file (config "backbone_file") instead of copying it
    tokenizer.safetensors          the adapted [cls] embedding, its frozen original, the decoder
    class_generator.safetensors    optional
    text_generator.safetensors     optional
    vae/                           optional, a diffusers AutoencoderKL folder (unless a hub name);
                                   models that share a VAE reference one folder ("../<name>/vae")

Weights are written in one dtype (fp16 by default) except the [cls] embeddings, and loaded with
strict key checks; a shared backbone or VAE is checked against the sha256 its config recorded.
`RepTok.save_pretrained` / `from_pretrained` are thin methods over `save_model` / `load_weights`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from reptok.decoder import ImageSpaceConfig
from reptok.model_config import RepTokConfig

if TYPE_CHECKING:
    from reptok.pipeline import RepTok

VAE_WEIGHTS = "diffusion_pytorch_model.safetensors"  # diffusers' file name, so from_pretrained finds it


def state_sha256(state: dict[str, Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        h.update(key.encode())
        h.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def as_stored(key: str, value: Tensor, dtype: torch.dtype) -> Tensor:
    """A tensor as it is written: floats in `dtype`, except the [cls] embeddings, kept in fp32.

    A ViT's cls embedding can be ~1e-6 at initialisation: subnormal in fp16, where it would keep
    only a few bits, and it is the whole of what stage A learns (D numbers: fp32 costs nothing).
    """
    value = value.detach().cpu().contiguous()
    if not value.is_floating_point():
        return value
    return value.float() if key.endswith("cls_token") else value.to(dtype)


def stored_state(state: dict[str, Tensor], dtype: torch.dtype) -> dict[str, Tensor]:
    return {k: as_stored(k, v, dtype) for k, v in state.items()}


def backbone_state(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """A stored backbone without its cls embedding: the tokenizer file holds the adapted one."""
    return {k: v for k, v in state.items() if k != "cls_token"}


def load_into(module: nn.Module, state: dict[str, Tensor], what: str) -> None:
    """Strict load with a message that names the first problem."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise ValueError(
            f"{what}: weights do not match the config ({len(missing)} missing, "
            f"{len(unexpected)} unexpected keys; first: {first})"
        )
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ValueError(
                f"{what}: {key!r} has shape {tuple(value.shape)}, the config needs {tuple(own[key].shape)}"
            )
    module.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=True)


# --------------------------------------------------------------------------------------- the VAE


def is_hub_name(vae: str | None, source: Path | None) -> bool:
    """True for a VAE named on the hub (kept as a name); False for random or local ones (stored)."""
    if vae is None or Path(vae).is_dir():
        return False
    return not (source is not None and (source / vae).is_dir())


def _is_path(vae: str) -> bool:
    """A folder, never a hub name ("owner/name" starts with neither "." nor "/")."""
    return vae.startswith((".", "/")) or Path(vae).is_absolute()


def build_vae(config: ImageSpaceConfig, root: Path | None) -> nn.Module | None:
    """The AutoencoderKL of an image space: from a folder (relative to the model folder `root`,
    e.g. "vae" or "../other/vae"), a hub name, or random weights from `vae_config`."""
    if config.kind != "vae":
        return None
    from diffusers import AutoencoderKL

    if config.vae is not None:
        local = root / config.vae if root is not None else None
        if local is not None and local.is_dir():
            return AutoencoderKL.from_pretrained(str(local))
        if _is_path(config.vae) and not Path(config.vae).is_dir():
            raise FileNotFoundError(f"VAE folder {local or config.vae} is missing")
        return AutoencoderKL.from_pretrained(config.vae)
    if config.vae_config is not None:
        return AutoencoderKL.from_config(config.vae_config)  # random weights: tests, or stage A from scratch
    raise ValueError(
        "image_space.kind='vae' needs image_space.vae (name or folder) or image_space.vae_config"
    )


def read_vae_state(folder: Path) -> dict[str, Tensor]:
    """The weights of a diffusers AutoencoderKL folder as stored (one file, or its shards)."""
    if (folder / VAE_WEIGHTS).is_file():
        files = [folder / VAE_WEIGHTS]
    else:  # diffusers shards a large model: diffusion_pytorch_model-00001-of-00002.safetensors, ...
        files = sorted(folder.glob("diffusion_pytorch_model-*-of-*.safetensors"))
    if not files:
        raise FileNotFoundError(f"VAE folder {folder} holds no {VAE_WEIGHTS}")
    state: dict[str, Tensor] = {}
    for file in files:
        state |= load_file(file)
    return state


def stored_vae(model: RepTok) -> nn.Module | None:
    """The VAE that save_pretrained stores (or references): None in pixel space or for a hub name."""
    space = model.config.image_space
    if space.kind != "vae" or is_hub_name(space.vae, model.source):
        return None
    return model.image_space.vae


def _write_vae(vae: nn.Module, folder: Path, dtype: torch.dtype) -> str:
    """A diffusers folder (config.json + weights cast to `dtype`; the module keeps its own dtype)."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("diffusion_pytorch_model*"):  # no stale shard or fp32 copy survives
        old.unlink()
    vae.save_config(folder)
    state = stored_state(vae.state_dict(), dtype)
    sha = state_sha256(state)
    save_file(state, folder / VAE_WEIGHTS, metadata={"format": "pt", "sha256": sha})
    return sha


def _referenced_vae(vae: nn.Module, folder: Path, name: str) -> str:
    """The sha256 of an already-written VAE folder, after checking that it holds `vae`'s weights
    (in the dtype that folder was written in)."""
    if not folder.is_dir():
        raise FileNotFoundError(f"vae_folder {name}: {folder} is not a folder")
    shared, own = read_vae_state(folder), vae.state_dict()
    sha = state_sha256(shared)
    if shared.keys() != own.keys() or sha != state_sha256(
        {k: v.detach().cpu().to(shared[k].dtype) for k, v in own.items()}
    ):
        raise ValueError(f"{name} holds a different VAE than this model's; refusing to reference it")
    return sha


def check_vae_folder(root: Path, config: RepTokConfig) -> None:
    """On load: the VAE folder a config names holds the VAE it was saved with (vae_sha256)."""
    if config.vae_sha256 is None or config.image_space.kind != "vae" or config.image_space.vae is None:
        return
    folder = root / config.image_space.vae
    if not folder.is_dir():
        raise FileNotFoundError(f"VAE folder {folder} is missing (config.json of {root} names it)")
    if state_sha256(read_vae_state(folder)) != config.vae_sha256:
        raise ValueError(f"{folder} does not hold the VAE this model was trained with (sha256 differs)")


# ------------------------------------------------------------------------------ the whole folder


def weight_files(model: RepTok) -> dict[str, dict[str, Tensor]]:
    """File name (without .safetensors) -> the state it holds, before the dtype cast."""
    encoder = model.encoder
    backbone = backbone_state(encoder.backbone.state_dict())
    tokenizer = {
        "encoder.cls_token": encoder.backbone.cls_token.data,
        "encoder.frozen_cls_token": encoder.frozen_cls_token,
    } | {f"decoder.{k}": v for k, v in model.decoder.state_dict().items()}
    files = {"backbone": backbone, "tokenizer": tokenizer}
    if model.class_generator is not None:
        files["class_generator"] = model.class_generator.state_dict()
    if model.text_generator is not None:
        files["text_generator"] = model.text_generator.state_dict()
    return files


def save_model(
    model: RepTok, root: Path, *, dtype: torch.dtype, backbone_file: str | None, vae_folder: str | None
) -> Path:
    """Write config.json and the weights (see `RepTok.save_pretrained`)."""
    root.mkdir(parents=True, exist_ok=True)
    files = weight_files(model)
    cast = {name: stored_state(state, dtype) for name, state in files.items()}
    if backbone_file is None:
        backbone_file = "backbone.safetensors"
        sha = state_sha256(cast["backbone"])
        save_file(cast["backbone"], root / backbone_file, metadata={"format": "pt", "sha256": sha})
    else:
        # Reference a backbone stored elsewhere (another model's, or a pre-training run's
        # backbone.safetensors, in whatever dtype it was written): it must hold these weights.
        shared = backbone_state(load_file(root / backbone_file))
        own = files["backbone"]
        if shared.keys() != own.keys() or not all(
            torch.equal(own[k].detach().cpu().to(shared[k].dtype), shared[k]) for k in own
        ):
            raise ValueError(
                f"{backbone_file} holds a different backbone than this model's; refusing to reference it"
            )
        sha = state_sha256(shared)
    for name, state in cast.items():
        if name != "backbone":
            save_file(state, root / f"{name}.safetensors", metadata={"format": "pt"})
    space, vae_sha = model.config.image_space, None
    vae = stored_vae(model)
    if vae is None:
        if vae_folder is not None:
            what = f"names the hub's {space.vae}" if space.kind == "vae" else "works in pixel space"
            raise ValueError(f"vae_folder={vae_folder!r}, but this model stores no VAE: it {what}")
    elif vae_folder is None:
        vae_sha = _write_vae(vae, root / "vae", dtype)
        space = space.replace(vae="vae", vae_config=None)
    else:
        vae_sha = _referenced_vae(vae, root / vae_folder, vae_folder)
        space = space.replace(vae=Path(vae_folder).as_posix(), vae_config=None)
    config = dataclasses.replace(
        model.config, image_space=space, backbone_file=backbone_file, backbone_sha256=sha, vae_sha256=vae_sha
    )
    (root / "config.json").write_text(json.dumps(config.to_dict(), indent=2) + "\n")
    return root


def read_config(root: Path) -> RepTokConfig:
    config_path = root / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no RepTok model at {root}: {config_path} is missing")
    return RepTokConfig.from_dict(json.loads(config_path.read_text()))


def load_weights(model: RepTok, root: Path) -> None:
    """Fill a model built from root's config.json with root's weights (strict, hash-checked)."""
    config = model.config
    backbone_path = root / config.backbone_file
    backbone = backbone_state(load_file(backbone_path))
    if config.backbone_sha256 and state_sha256(backbone) != config.backbone_sha256:
        raise ValueError(
            f"{backbone_path} does not hold the backbone this model was trained on (sha256 differs)"
        )
    tokenizer = load_file(root / "tokenizer.safetensors")
    backbone["cls_token"] = tokenizer.pop("encoder.cls_token")
    load_into(model.encoder.backbone, backbone, "backbone")
    model.encoder.frozen_cls_token.copy_(tokenizer.pop("encoder.frozen_cls_token"))
    load_into(model.decoder, {k.removeprefix("decoder."): v for k, v in tokenizer.items()}, "decoder")
    for name in ("class_generator", "text_generator"):
        module = getattr(model, name)
        if module is not None:
            load_into(module, load_file(root / f"{name}.safetensors"), name)
