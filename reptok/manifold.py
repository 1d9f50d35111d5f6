"""2-D maps of the latent space: fit a layout once, place new tokens on it, and store it.

    xy = fit_2d(tokens)                       # (N, 2), UMAP with the cosine metric
    where = place(z, tokens, xy)              # a new token on the same map, no refit
    save_manifold("assets/manifold.npz", names=..., categories=..., settings={"0.1": {...}})

`place` uses a cosine k-NN average of the neighbours' coordinates instead of a fitted
UMAP's `transform`, so the on-disk format needs no pickled estimator: plain arrays only,
loaded with `allow_pickle=False`.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

MIN_UMAP_POINTS = 15  # UMAP's spectral init needs more points than neighbours; below this, PCA
FORMAT_VERSION = 1
_KEY = re.compile(r"^[A-Za-z0-9_.+-]+$")  # λ labels become array names inside the .npz


def lambda_label(weight: float) -> str:
    """λ as a manifold file keys it: "0", "0.1", "1", "inf"."""
    return "inf" if math.isinf(weight) else f"{weight:g}"


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def fit_2d(tokens: np.ndarray, seed: int = 0, method: Literal["umap", "pca"] = "umap") -> np.ndarray:
    """Tokens (N, D) -> coordinates (N, 2), float32. UMAP (cosine metric) for N >= 15, else PCA."""
    x = np.asarray(tokens, dtype=np.float32).reshape(len(tokens), -1)  # (N, D)
    n = len(x)
    if n == 0:
        return np.zeros((0, 2), np.float32)
    if n < 3:  # PCA with 2 components needs at least 2 samples and 2 features; lay them on a line
        return np.stack([np.arange(n, dtype=np.float32), np.zeros(n, np.float32)], axis=1)
    if method == "umap" and n >= MIN_UMAP_POINTS:
        import umap

        reducer = umap.UMAP(
            n_components=2,
            metric="cosine",
            n_neighbors=min(15, n - 1),
            random_state=seed,
            n_jobs=1,  # random_state forces one job anyway; saying so silences umap's warning
        )
        return reducer.fit_transform(x).astype(np.float32)
    if method not in ("umap", "pca"):
        raise ValueError(f"method must be 'umap' or 'pca', got {method!r}")
    from sklearn.decomposition import PCA

    # Cosine geometry: project the unit vectors, so PCA and UMAP agree on what "close" means.
    return PCA(n_components=2, random_state=seed).fit_transform(_unit(x)).astype(np.float32)


def nearest(token: np.ndarray, tokens: np.ndarray, k: int = 10) -> np.ndarray:
    """Indices of the k tokens (N, D) most cosine-similar to `token` (D,), most similar first."""
    sims = _unit(tokens.reshape(len(tokens), -1)) @ _unit(np.asarray(token).reshape(-1))  # (N,)
    k = max(0, min(int(k), len(sims)))
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    top = np.argpartition(-sims, k - 1)[:k]
    return top[np.argsort(-sims[top], kind="stable")].astype(np.int64)


def place(token: np.ndarray, tokens: np.ndarray, xy: np.ndarray, k: int = 10) -> np.ndarray:
    """Put a new token (D,) on an existing map: the average of its k nearest neighbours'
    coordinates (N, 2), weighted by their cosine similarity (shifted to be positive)."""
    if len(tokens) == 0:
        raise ValueError("cannot place a token on an empty map")
    idx = nearest(token, tokens, k)
    sims = _unit(tokens[idx].reshape(len(idx), -1)) @ _unit(np.asarray(token).reshape(-1))  # (k,)
    # cos ∈ [-1, 1] -> weights in (0, 2]; sharpened so the closest neighbour dominates.
    weights = np.maximum(sims + 1.0, 1e-6) ** 8
    return (weights[:, None] * xy[idx]).sum(0).astype(np.float32) / weights.sum()


@dataclass
class Manifold:
    """A precomputed map: per λ label, the held-out tokens and their 2-D coordinates."""

    names: list[str]  # one per point, e.g. the emoji name
    categories: list[str]  # one per point, for colour
    settings: dict[str, dict[str, np.ndarray]]  # λ label -> {"xy": (N, 2), "tokens": (N, D)}
    # The same points in each shipped model's own latent space (model name -> (N, D)), for
    # nearest neighbours per backbone; λ settings alone cannot tell two backbones apart.
    model_tokens: dict[str, np.ndarray] = field(default_factory=dict)
    # λ label -> the shipped model whose tokens the setting holds, so a point is decoded (and an
    # upload placed) by that model: several models can share a λ (the default and its twin).
    setting_models: dict[str, str] = field(default_factory=dict)


def save_manifold(
    path: str | os.PathLike[str],
    *,
    names: list[str],
    categories: list[str],
    settings: dict[str, dict[str, np.ndarray]],
    model_tokens: dict[str, np.ndarray] | None = None,
    setting_models: dict[str, str] | None = None,
) -> Path:
    """Write a Manifold as a compressed .npz of plain arrays (tokens stored as float16)."""
    model_tokens = model_tokens or {}
    setting_models = setting_models or {}
    if unknown := set(setting_models) - set(settings):
        raise ValueError(f"setting_models names λ settings that are not in the file: {sorted(unknown)}")
    n = len(names)
    if len(categories) != n:
        raise ValueError(f"{len(categories)} categories for {n} names")
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(FORMAT_VERSION),
        "names": np.array(names, dtype=np.str_),
        "categories": np.array(categories, dtype=np.str_),
        "settings": np.array(list(settings), dtype=np.str_),
        "models": np.array(list(model_tokens), dtype=np.str_),
        "setting_models": np.array([setting_models.get(label, "") for label in settings], dtype=np.str_),
    }
    for label, entry in settings.items():
        if not _KEY.match(label):
            raise ValueError(f"λ label {label!r} must match {_KEY.pattern}")
        xy, tokens = np.asarray(entry["xy"]), np.asarray(entry["tokens"])
        if xy.shape != (n, 2) or tokens.ndim != 2 or len(tokens) != n:
            raise ValueError(
                f"setting {label!r}: need xy (N, 2) and tokens (N, D) with N={n}, got {xy.shape}, {tokens.shape}"
            )
        arrays[f"xy/{label}"] = xy.astype(np.float32)
        arrays[f"tokens/{label}"] = tokens.astype(np.float16)
    for index, (name, tokens) in enumerate(model_tokens.items()):
        if np.ndim(tokens) != 2 or len(tokens) != n:
            raise ValueError(f"model {name!r}: need tokens (N, D) with N={n}, got {np.shape(tokens)}")
        arrays[f"model_tokens/{index}"] = np.asarray(tokens).astype(np.float16)  # names may not be keys
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("wb") as f:  # a file object, so numpy does not append a second ".npz"
        np.savez_compressed(f, **arrays)
    return out


def load_manifold(path: str | os.PathLike[str]) -> Manifold:
    """Read a file written by `save_manifold`; never unpickles anything."""
    with np.load(Path(path), allow_pickle=False) as data:
        version = int(data["format_version"])
        if version > FORMAT_VERSION:
            raise ValueError(f"manifold format {version} is newer than this library ({FORMAT_VERSION})")
        names = [str(s) for s in data["names"]]
        categories = [str(s) for s in data["categories"]]
        settings = {
            str(label): {"xy": data[f"xy/{label}"], "tokens": data[f"tokens/{label}"]}
            for label in data["settings"]
        }
        models = [str(s) for s in data["models"]] if "models" in data.files else []
        model_tokens = {name: data[f"model_tokens/{i}"] for i, name in enumerate(models)}
        owners = [str(s) for s in data["setting_models"]] if "setting_models" in data.files else []
        setting_models = {label: owner for label, owner in zip(settings, owners, strict=False) if owner}
    return Manifold(
        names=names,
        categories=categories,
        settings=settings,
        model_tokens=model_tokens,
        setting_models=setting_models,
    )
