"""The authors' released checkpoint, `reptok-xl-600k-ImageNet.ckpt`, as a model of this library.

    python -m reptok convert-official reptok-xl-600k-ImageNet.ckpt --out assets/models/reptok-xl-imagenet256
    python -m reptok fetch-official --out DIR     # download, verify and convert in one step (reptok.download)

The file is the Lightning module of the official generator training (`TrainerModuleLatentFlow`):

    model.net.*, ema_model.net.*         MLP-Mixer class generator; the official code samples with the EMA
    first_stage.encoder.encoder.*        fine-tuned DINOv2 ViT-B/14-reg, cast to bf16
    first_stage.decoder.decoder.*        the tokenizer: flow decoder (backbone, time_emb, time_in_proj,
                                         mapping), SD-VAE (ae.ae), and its condition encoder (encoder.dino:
                                         the fine-tuned DINOv2 in fp32, the frozen original as target_model,
                                         temp_pos_embed, new_reg, the token projection `backbone`)
    metric_tracker.*, tokenizer.*        evaluation / training only: dropped

Conventions converted at this boundary, so the rest of the library keeps one of each:
- the decoder runs time backwards (t = 1 noise, v = noise − x): `DecoderConfig.time_reversed`;
- the generator already uses t = 0 noise, v = x − noise, CFG u + s·(c − u) for t_curr in [0.3, 0.9]
  and null class `num_classes`: the same as `reptok.sampling`, nothing to convert (one nuance: the
  official float32 linspace puts the 50-step grid's 0.3 at 0.29999998, so it skips guidance at that
  single step, where `reptok.sampling`'s exact grid guides);
- it samples z / scale_factor (the first stage's hyper-parameter): stored as the generator's
  `latent_std`, so `RepTok.sample_tokens` returns raw [cls] tokens;
- timm folds DINOv2's cls position embedding into `cls_token` and keeps the patch grid only, resampled
  here once to 224 px with the same bicubic antialiased interpolation DINOv2 runs at every forward;
- the decoder adds a learned `temp_pos_embed` to z before its residual projection LN(W·z + b) + z:
  folded into b and the LayerNorm bias (exact), so `TokenProjection` takes raw tokens.

The checkpoint is read with `torch.load(weights_only=True)` and an allowlist of the few classes its
hyper-parameters pickle (omegaconf containers), each replaced by an inert stand-in that only records
its state: no code from the checkpoint or from omegaconf runs, and omegaconf need not be installed.
"""

from __future__ import annotations

import math
import pickle
import re
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.models._meta import _IMAGENET_CATEGORIES  # the 1000 ImageNet-1k names, in label order

from reptok.decoder import DECODER_PRESETS, Decoder, DecoderConfig, ImageSpace, ImageSpaceConfig
from reptok.encoder import ENCODER_PRESETS, Encoder, EncoderConfig
from reptok.generator import MIXER_PRESETS, MixerGenerator, MixerGeneratorConfig
from reptok.pipeline import RepTok, RepTokConfig, SamplingConfig

CHECKPOINT_URL = "https://ommer-lab.com/files/reptok/reptok-xl-600k-ImageNet.ckpt"
# Size in bytes and sha256 of the file at CHECKPOINT_URL: not recorded yet (it has never been
# downloaded where this library was written: no network). None: `reptok.download` checks the size
# against the server's Content-Length and the zip CRCs only. Record both from a verified download.
CHECKPOINT_SIZE: int | None = None
CHECKPOINT_SHA256: str | None = None
SD_VAE = "stabilityai/sd-vae-ft-mse"
# diffusers config of SD_VAE: rebuilds it offline from the copy inside the checkpoint (vae="checkpoint").
SD_VAE_CONFIG: dict[str, Any] = {
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 256,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "norm_num_groups": 32,
    "act_fn": "silu",
}  # fmt: skip
# What the official notebooks sample with (scripts/generation.ipynb, TrainerAutoencoder.decode).
OFFICIAL_SAMPLING = SamplingConfig(decode_steps=50, generate_steps=50, cfg_scale=1.5, cfg_interval=(0.3, 0.9))

_DECODER = "first_stage.decoder.decoder."
_DINO = _DECODER + "encoder.dino."
_GROUPS: dict[str, str] = {  # prefix -> group; the first match wins, every key must match one
    "ema_model.net.": "ema",
    "model.net.": "generator",
    "first_stage.encoder.encoder.": "dino_bf16",
    _DECODER + "ae.ae.": "vae",
    _DINO + "model.": "dino",
    _DINO + "target_model.": "dino_target",
    _DINO + "backbone.": "token_proj",  # the residual projection of z into the decoder
    _DINO + "temp_pos_embed": "token_proj",  # added to z before it
    _DINO + "new_reg": "ignored",  # extra tokens the per-token projection maps, then drops: no effect
    _DECODER: "decoder",  # backbone, time_emb, time_in_proj, mapping
    "metric_tracker.": "ignored",
    "tokenizer.": "ignored",
}


# ------------------------------------------------------------------------------- safe loading


class _Inert:
    """Stand-in for a pickled hyper-parameter class: keeps the state it is given, runs nothing."""

    state: Any = None

    def __setstate__(self, state: Any) -> None:
        self.state = state


def _empty_dict(*_args: Any) -> dict:
    return {}  # collections.defaultdict(dict): omegaconf's resolver cache, empty in a saved config


_OMEGACONF = ("dictconfig.DictConfig", "listconfig.ListConfig", "base.ContainerMetadata", "base.Metadata")
_NODES = ("AnyNode", "StringNode", "IntegerNode", "FloatNode", "BooleanNode")
# Everything the hyper-parameters of the official checkpoint pickle (Lightning stores the omegaconf
# configs it was built from), and nothing else.
SAFE_GLOBALS: list[Callable | tuple[Callable, str]] = [
    *[(_Inert, f"omegaconf.{name}") for name in _OMEGACONF],
    *[(_Inert, f"omegaconf.nodes.{name}") for name in _NODES],
    (_Inert, "typing.Any"),  # container metadata: key and element types
    (_empty_dict, "collections.defaultdict"),
    dict,
    list,
    int,
]


def _plain(value: Any) -> Any:
    """Pickled omegaconf containers -> plain dicts / lists / scalars (None for anything else)."""
    if isinstance(value, _Inert):
        state = value.state if isinstance(value.state, dict) else {}
        return _plain(state.get("_content", state.get("_val")))
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value if isinstance(value, str | int | float | bool) or value is None else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict[str, Any]]:
    """A Lightning checkpoint -> (state dict without `_orig_mod.` segments, hyper-parameters as plain
    types). Refuses anything that pickles classes outside `SAFE_GLOBALS`, naming them."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    with torch.serialization.safe_globals(SAFE_GLOBALS):
        try:  # mmap: the weights are read where they are needed, not all at once (a few GB)
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except pickle.UnpicklingError as err:
            try:
                names = torch.serialization.get_unsafe_globals_in_checkpoint(path)
            except Exception:  # not a zip checkpoint: the error itself names the class
                names = []
            what = ", ".join(sorted(names)) or str(err).splitlines()[0]
            raise ValueError(
                f"refusing to load {path}: it pickles objects outside the allowlist of "
                f"reptok.official.SAFE_GLOBALS ({what}); it was not written by the official training code, "
                "or carries more than weights and their hyper-parameters"
            ) from err
    state = ckpt.get("state_dict") if isinstance(ckpt, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a Lightning checkpoint: no 'state_dict' of tensors")
    # torch.compile wraps modules as `_orig_mod` (the official mixer is compiled); the key is the same module.
    state = {re.sub(r"(^|\.)_orig_mod\.", r"\1", k): v for k, v in state.items()}
    return state, _plain(ckpt.get("hyper_parameters") or {})


def _group(state: dict[str, Tensor]) -> dict[str, dict[str, Tensor]]:
    groups: dict[str, dict[str, Tensor]] = {g: {} for g in _GROUPS.values()}
    for key, value in state.items():
        prefix = next((p for p in _GROUPS if key.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"unexpected key in the official checkpoint: {key!r} (not a RepTok-XL layout)")
        # "a.b." prefixes are stripped; "a.b.name" entries keep "name"
        groups[_GROUPS[prefix]][key.removeprefix(prefix[: prefix.rfind(".") + 1])] = value.float()
    return groups


# ------------------------------------------------------------------ official -> library keys


def _rename(state: dict[str, Tensor], rules: list[tuple[str, str]], what: str) -> dict[str, Tensor]:
    """Rename every key by the first rule (regex, template) that matches it in full; a key no rule
    matches is an error that names it. A template of "" drops the key."""
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        for pattern, template in rules:
            match = re.fullmatch(pattern, key)
            if match:
                if template:
                    out[match.expand(template)] = value
                break
        else:
            raise ValueError(f"{what}: official key {key!r} has no place in this library's model")
    return out


_DECODER_RULES = [
    (r"backbone\.mid_merge\.pre_proj\.proj\.weight", "patch_embed.weight"),
    (r"backbone\.mid_merge\.proj\.weight", "joint_proj.weight"),
    (r"backbone\.mid_level\.(\d+)\.self_attn\.norm\.linear\.weight", r"layers.\1.attn.norm.linear.weight"),
    (r"backbone\.mid_level\.(\d+)\.self_attn\.qkv_proj\.weight", r"layers.\1.attn.qkv.weight"),
    (r"backbone\.mid_level\.(\d+)\.self_attn\.scale", r"layers.\1.attn.scale"),
    (r"backbone\.mid_level\.(\d+)\.self_attn\.out_proj\.weight", r"layers.\1.attn.out.weight"),
    (r"backbone\.mid_level\.\d+\.self_attn\.pos_emb\.freqs", ""),  # fixed; checked in _check_rope
    (r"backbone\.mid_level\.(\d+)\.ff\.norm\.linear\.weight", r"layers.\1.ff.norm.linear.weight"),
    (r"backbone\.mid_level\.(\d+)\.ff\.up_proj\.weight", r"layers.\1.ff.ff.up.weight"),
    (r"backbone\.mid_level\.(\d+)\.ff\.down_proj\.weight", r"layers.\1.ff.ff.down.weight"),
    (r"backbone\.mid_split\.post_proj\.norm\.scale", "out_norm.scale"),
    (r"backbone\.mid_split\.post_proj\.proj\.weight", "out_proj.weight"),
    (r"time_emb\.weight", "time_embed.freqs"),
    (r"time_in_proj\.weight", "time_embed.in_proj.weight"),
    (r"mapping\.(in_norm|out_norm)\.scale", r"time_embed.\1.scale"),
    (r"mapping\.blocks\.(\d+)\.norm\.scale", r"time_embed.blocks.\1.norm.scale"),
    (r"mapping\.blocks\.(\d+)\.up_proj\.weight", r"time_embed.blocks.\1.ff.up.weight"),
    (r"mapping\.blocks\.(\d+)\.down_proj\.weight", r"time_embed.blocks.\1.ff.down.weight"),
]
_MIXER_LAYERS = {"norm": "norm", "fn.0": "fc1", "fn.3": "fc2"}  # PreNormResidual(norm, fn=Sequential)


def _mixer_state(official: dict[str, Tensor], depth: int) -> dict[str, Tensor]:
    """MLPMixer1D keys -> MixerGenerator keys. `mixer` is one Sequential: 0 the input Linear,
    1..depth the blocks (.0 token mixing with 1×1 Conv1d, .1 channel mixing), then LayerNorm, Linear."""
    tail = {0: "in_proj", depth + 1: "out_norm", depth + 2: "out_proj"}
    out: dict[str, Tensor] = {}
    for key, value in official.items():
        if key == "pos_embed":
            name = key
        elif key == "label_embedder.embedding_table.weight":
            name = "class_embed.weight"
        elif m := re.fullmatch(r"t_embedder\.mlp\.([02])\.(weight|bias)", key):
            name = f"time_embed.fc{1 if m[1] == '0' else 2}.{m[2]}"
        elif (m := re.fullmatch(r"mixer\.(\d+)\.(weight|bias)", key)) and int(m[1]) in tail:
            name = f"{tail[int(m[1])]}.{m[2]}"
        elif m := re.fullmatch(r"mixer\.(\d+)\.([01])\.(norm|fn\.0|fn\.3)\.(weight|bias)", key):
            branch = "token_mix" if m[2] == "0" else "channel_mix"
            name = f"blocks.{int(m[1]) - 1}.{branch}.{_MIXER_LAYERS[m[3]]}.{m[4]}"
            if branch == "token_mix" and m[3] != "norm" and m[4] == "weight":
                value = value[..., 0]  # Conv1d(kernel 1) (out, in, 1) -> Linear (out, in)
        else:
            raise ValueError(f"generator: official key {key!r} has no place in this library's model")
        out[name] = value
    return out


def _dino_to_timm(dino: dict[str, Tensor], image_size: int, patch: int) -> dict[str, Tensor]:
    """DINOv2-with-registers keys -> timm `vit_*_reg4_dinov2` keys, at `image_size`."""
    out = {
        k: v for k, v in dino.items() if k not in ("cls_token", "pos_embed", "register_tokens", "mask_token")
    }
    pos = dino["pos_embed"]  # (1, 1 + M², D): the cls position, then an M×M grid (M = 37)
    m, grid, d = math.isqrt(pos.shape[1] - 1), image_size // patch, pos.shape[-1]
    out["cls_token"] = dino["cls_token"] + pos[:, :1]
    out["reg_token"] = dino["register_tokens"]
    patches = pos[:, 1:].reshape(1, m, m, d).permute(0, 3, 1, 2)  # (1, D, M, M)
    if m != grid:  # what DinoVisionTransformer.interpolate_pos_encoding computes at every forward
        patches = F.interpolate(patches, size=(grid, grid), mode="bicubic", antialias=True)
    out["pos_embed"] = patches.permute(0, 2, 3, 1).reshape(1, grid * grid, d)
    return out


def _check_rope(decoder: dict[str, Tensor], model: Decoder) -> None:
    """The official RoPE frequencies are stored; ours are computed. They must agree."""
    ours = model.layers[0].attn.rope.freqs  # (H, d)
    for key, freqs in decoder.items():
        if key.endswith("pos_emb.freqs") and not (
            freqs.shape == (2, *ours.shape) and torch.allclose(freqs, ours.expand_as(freqs), rtol=1e-5)
        ):
            raise ValueError(
                f"decoder: {key!r} differs from the fixed axial RoPE frequencies (learned RoPE?)"
            )


def _load(module: nn.Module, state: dict[str, Tensor], what: str) -> None:
    """Strict load: every weight of the module filled, every converted tensor used, shapes equal."""
    own = module.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        first = f"{what}.{missing[0]} has no official weight" if missing else f"{unexpected[0]!r} is unused"
        counts = f"{len(missing)} missing, {len(unexpected)} unused"
        raise ValueError(f"{what}: official weights do not match ({counts}; {first})")
    for key, value in state.items():
        if value.shape != own[key].shape:
            raise ValueError(
                f"{what}.{key}: official shape {tuple(value.shape)}, model needs {tuple(own[key].shape)}"
            )
    module.load_state_dict(state, strict=True)


# ----------------------------------------------------------------------- configs from shapes


def _count(state: dict[str, Tensor], pattern: str) -> int:
    """How many distinct indices the (one-group) regex matches: the depth of a stack of layers."""
    return len({m[1] for k in state if (m := re.fullmatch(pattern, k))})


def _encoder_config(dino: dict[str, Tensor]) -> EncoderConfig:
    """DINOv2-with-registers of the checkpoint's width and depth, preprocessed as the official
    RepTokImageEncoder does: center crop, (pool and) bilinear resize to 224, ImageNet mean/std."""
    if "register_tokens" not in dino or "blocks.0.mlp.fc1.weight" not in dino:
        raise ValueError("encoder: expected a DINOv2 ViT with registers and an MLP (not SwiGLU) feed-forward")
    dim, depth = dino["cls_token"].shape[-1], _count(dino, r"blocks\.(\d+)\.norm1\.weight")
    patch = dino["patch_embed.proj.weight"].shape[-1]
    base = ENCODER_PRESETS["dinov2-b14-reg"]
    name, kwargs = base.backbone, dict(base.backbone_kwargs)
    if (dim, depth, patch) != (768, 12, 14):  # the same architecture at another size (heads 64 wide)
        name = base.backbone.split(".")[0]  # no pretrained tag: no such weights exist
        kwargs = {"img_size": 224, "patch_size": patch, "embed_dim": dim, "depth": depth}
        kwargs["num_heads"] = dim // 64
    return base.replace(
        backbone=name, backbone_kwargs=kwargs, pretrained=False, image_size=224, crop="center",
        resize="pool-bilinear", mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
    )  # fmt: skip


def _decoder_config(decoder: dict[str, Tensor], token_dim: int, input_size: int) -> DecoderConfig:
    width = decoder["backbone.mid_merge.proj.weight"].shape[0]
    heads = decoder["backbone.mid_level.0.self_attn.scale"].shape[0]
    mapping = decoder["time_in_proj.weight"].shape[0]
    in_channels = DECODER_PRESETS["reptok-xl-imagenet256"].in_channels  # SD-VAE latents
    patch = math.isqrt(decoder["backbone.mid_merge.pre_proj.proj.weight"].shape[1] // in_channels)
    return DECODER_PRESETS["reptok-xl-imagenet256"].replace(
        token_dim=token_dim, input_size=input_size, patch_size=patch, width=width, head_dim=width // heads,
        depth=_count(decoder, r"backbone\.mid_level\.(\d+)\.self_attn\.scale"),
        ff_mult=decoder["backbone.mid_level.0.ff.down_proj.weight"].shape[1] // width,
        mapping_width=mapping, mapping_depth=_count(decoder, r"mapping\.blocks\.(\d+)\.norm\.scale"),
        mapping_ff_mult=decoder["mapping.blocks.0.down_proj.weight"].shape[1] // mapping,
        time_reversed=True,
    )  # fmt: skip


def _generator_config(mixer: dict[str, Tensor]) -> MixerGeneratorConfig:
    if mixer["pos_embed"].shape[1] != 1 or mixer["mixer.1.0.fn.0.weight"].shape[1] != 3:
        raise ValueError("generator: expected an MLP-Mixer over [z_t, class, time] for one token")
    width = mixer["mixer.0.weight"].shape[0]
    return MIXER_PRESETS["reptok-xl-imagenet256"].replace(
        token_dim=mixer["pos_embed"].shape[-1],
        num_classes=mixer["label_embedder.embedding_table.weight"].shape[0] - 1,  # last row: null class
        width=width, depth=_count(mixer, r"mixer\.(\d+)\.0\.norm\.weight"),
        token_mlp_ratio=mixer["mixer.1.0.fn.0.weight"].shape[0] / 3,
        channel_mlp_ratio=mixer["mixer.1.1.fn.0.weight"].shape[0] / width,
        freq_dim=mixer["t_embedder.mlp.0.weight"].shape[1],
    )  # fmt: skip


# ---------------------------------------------------------------------------------- convert


def _dinos(groups: dict[str, dict[str, Tensor]]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(fine-tuned, frozen original) DINOv2. The fine-tuned one is the tokenizer's fp32 copy; the bf16
    copy that the official encode() runs must be the same weights rounded, and the original must differ
    from it only in the [cls] embedding (all that stage A trains, and all our frozen path keeps)."""
    dino, bf16, target = groups["dino"] or groups["dino_bf16"], groups["dino_bf16"], groups["dino_target"]
    if not dino:
        raise ValueError("the checkpoint holds no DINOv2 encoder (first_stage.encoder.encoder.*)")
    for other, what, free in ((bf16, "its bf16 copy", ()), (target, "the frozen original", ("cls_token",))):
        for key, value in other.items():
            ours = dino.get(key)
            if other is bf16 and ours is not None:
                ours = ours.to(torch.bfloat16).float()
            if key not in free and (ours is None or not torch.equal(ours, value)):
                warnings.warn(f"fine-tuned DINOv2 and {what} differ at {key!r}", stacklevel=4)
                break
    return dino, target or dino


def _encoder(groups: dict[str, dict[str, Tensor]]) -> Encoder:
    dino, target = _dinos(groups)
    config = _encoder_config(dino)
    patch, size = dino["patch_embed.proj.weight"].shape[-1], config.image_size
    state = {f"backbone.{k}": v for k, v in _dino_to_timm(dino, size, patch).items()}
    state["frozen_cls_token"] = _dino_to_timm(target, size, patch)["cls_token"]
    encoder = Encoder(config)
    _load(encoder, state, "encoder")
    return encoder


def _decoder(groups: dict[str, dict[str, Tensor]], image_size: int) -> Decoder:
    proj, official = groups["token_proj"], groups["decoder"]
    token_dim = proj["fc.weight"].shape[1]
    decoder = Decoder(_decoder_config(official, token_dim, input_size=image_size // 8))  # SD-VAE: 8× down
    _check_rope(official, decoder)
    state = _rename(official, _DECODER_RULES, "decoder")
    # z + temp_pos_embed enters LN(W·z + b) + pad(z): fold the constant into b and the LN bias (exact).
    temp = proj.get("temp_pos_embed", torch.zeros(token_dim)).reshape(token_dim)
    state |= {
        "token_proj.fc.weight": proj["fc.weight"],
        "token_proj.fc.bias": proj["fc.bias"] + proj["fc.weight"] @ temp,
        "token_proj.norm.weight": proj["ln.weight"],
        "token_proj.norm.bias": proj["ln.bias"] + F.pad(temp, (0, decoder.config.width - token_dim)),
    }
    _load(decoder, state, "decoder")
    return decoder


def _generator(groups: dict[str, dict[str, Tensor]], scale_factor: float) -> MixerGenerator:
    official = groups["ema"] or groups["generator"]  # the official code samples with the EMA if it has one
    generator = MixerGenerator(_generator_config(official))
    d = generator.config.token_dim
    # The official generator samples z / scale_factor: denormalize() maps its samples back to z.
    state = _mixer_state(official, generator.config.depth) | {
        "stats.latent_mean": torch.zeros(1, 1, d),
        "stats.latent_std": torch.full((1, 1, d), scale_factor),
    }
    _load(generator, state, "generator")
    return generator


def _image_space(
    groups: dict[str, dict[str, Tensor]], vae: str, vae_config: dict[str, Any] | None
) -> tuple[ImageSpaceConfig, ImageSpace]:
    if vae == "hub":
        # Named, not loaded: save_pretrained keeps a hub VAE as its name, so the in-memory stand-in
        # (pixel space) is never used, and nothing is downloaded at conversion.
        return ImageSpaceConfig(kind="vae", vae=SD_VAE, scale=0.18215), ImageSpace(ImageSpaceConfig())
    if vae != "checkpoint":
        raise ValueError(f"vae must be 'hub' or 'checkpoint', got {vae!r}")
    from diffusers import AutoencoderKL

    model = AutoencoderKL.from_config(vae_config or SD_VAE_CONFIG)
    _load(model, groups["vae"], "vae")
    config = ImageSpaceConfig(kind="vae", scale=0.18215)
    return config, ImageSpace(config, model)


def convert_official(
    checkpoint: str | Path,
    out: str | Path,
    *,
    vae: Literal["hub", "checkpoint"] = "hub",
    vae_config: dict[str, Any] | None = None,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write the official checkpoint as a RepTok model folder (`RepTok.from_pretrained` loads it).

    vae="hub": config.json names `stabilityai/sd-vae-ft-mse`, loaded through diffusers on first use;
    vae="checkpoint": the SD-VAE copy inside the checkpoint is written to vae/ (`vae_config`, default
    SD_VAE_CONFIG, is its diffusers config): the model then never needs the hub. Nothing downloads here.
    """
    state, hparams = load_checkpoint(checkpoint)
    groups = _group(state)
    del state
    if not (groups["decoder"] and groups["token_proj"] and (groups["ema"] or groups["generator"])):
        raise ValueError(f"{checkpoint} lacks the decoder or the generator of a RepTok generation checkpoint")
    stage = hparams.get("first_stage_cfg")
    params = (stage.get("params") if isinstance(stage, dict) else None) or {}
    scale_factor, image_size = params.get("scale_factor", 1.0), params.get("image_size", 256)  # its defaults
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in (scale_factor, image_size)):
        raise ValueError(
            f"first_stage_cfg: scale_factor {scale_factor!r} / image_size {image_size!r} not numbers"
        )

    encoder, decoder = _encoder(groups), _decoder(groups, int(image_size))
    generator = _generator(groups, float(scale_factor))
    space_config, image_space = _image_space(groups, vae, vae_config)
    n = generator.config.num_classes
    config = RepTokConfig(
        encoder=encoder.config, decoder=decoder.config, image_space=space_config,
        class_generator=generator.config, sampling=OFFICIAL_SAMPLING,
        class_names=list(_IMAGENET_CATEGORIES) if n == len(_IMAGENET_CATEGORIES) else None,
        info={
            "name": Path(out).name, "backbone": "DINOv2 ViT-B/14 + registers (fine-tuned [cls])",
            "source": f"official RepTok checkpoint {Path(checkpoint).name} ({CHECKPOINT_URL})",
            "generator_weights": "ema" if groups["ema"] else "raw", "scale_factor": scale_factor,
            "trained": True,
            "note": "the cosine weight λ is not recorded in the checkpoint; the config shows the preset's",
        },
    )  # fmt: skip
    model = RepTok(config, encoder, decoder, image_space, class_generator=generator)
    return model.save_pretrained(out, dtype=dtype)
