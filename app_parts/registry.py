"""Which RepTok models the app can use: found on disk at start, each loaded once on first use."""

from __future__ import annotations

import json
import logging
import math
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from reptok.encoder import BACKBONE_METHODS
from reptok.manifold import lambda_label
from reptok.pipeline import RepTok, RepTokConfig

log = logging.getLogger("reptok.app")
ROOT = Path(__file__).resolve().parents[1]
ASSET_MODELS = ROOT / "assets" / "models"
MODELS_ENV = "REPTOK_MODELS_DIR"
METHOD_ORDER = {method: i for i, method in enumerate(BACKBONE_METHODS)}  # the paper's table order


@dataclass
class ModelEntry:
    """A model folder and its config (read at discovery: cheap); the weights load on demand."""

    key: str  # unique label shown in dropdowns
    path: Path
    config: RepTokConfig
    model: RepTok | None = None
    metrics: dict[str, object] = field(default_factory=dict)  # its metrics.json, read with the model
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def backbone(self) -> str:
        return str(self.config.info.get("backbone") or self.config.encoder.backbone)

    @property
    def cosine_weight(self) -> float:
        return float(self.config.encoder.cosine_weight)

    @property
    def lam(self) -> str:
        return lambda_label(self.cosine_weight)

    @property
    def display(self) -> str:
        return f"{self.key} · {self.backbone} · λ={self.lam}"

    @property
    def method(self) -> str:
        """The backbone's pre-training method (dino/mae/clip/random), or its description when unknown."""
        return str(self.config.info.get("backbone_method") or self.backbone)

    @property
    def is_main(self) -> bool:
        return bool(self.config.info.get("main"))

    def parameter_count(self) -> int:
        """From the safetensors headers, so the About tab needs no model loaded."""
        from safetensors import safe_open

        files = {self.path / self.config.backbone_file, self.path / "tokenizer.safetensors"}
        files |= {self.path / f"{n}.safetensors" for n in ("class_generator", "text_generator")}
        total = 0
        for file in files:
            if file.is_file():
                with safe_open(str(file), framework="pt") as f:
                    for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                        total += math.prod(f.get_slice(key).get_shape())
        return total


def read_metrics(folder: Path) -> dict[str, object]:
    """A model folder's metrics.json (train/evaluate.py), or {} if it has none or it cannot be read:
    the numbers are shown beside the model, never needed to use it."""
    path = folder / "metrics.json"
    if not path.is_file():
        return {}
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        log.warning("ignoring %s: %s", path, err)
        return {}
    return metrics if isinstance(metrics, dict) else {}


def _model_dirs(root: Path) -> list[Path]:
    """`root` itself if it is a model folder, else its sub-folders that are."""
    if (root / "config.json").is_file():
        return [root]
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / "config.json").is_file())


def discover_model_dirs() -> list[Path]:
    """assets/models/*/ plus every folder named in $REPTOK_MODELS_DIR (os.pathsep-separated)."""
    roots = [ASSET_MODELS]
    roots += [Path(p).expanduser() for p in os.environ.get(MODELS_ENV, "").split(os.pathsep) if p.strip()]
    found: list[Path] = []
    for root in roots:
        for path in _model_dirs(root):
            if path.resolve() not in {p.resolve() for p in found}:
                found.append(path)
    return found


class ModelRegistry:
    """Model folders by label; `get(label)` loads a model on first use (once, even under concurrency)."""

    def __init__(self, model_dirs: Iterable[str | os.PathLike[str]] | None = None) -> None:
        dirs = discover_model_dirs() if model_dirs is None else [Path(p) for p in model_dirs]
        self.entries: dict[str, ModelEntry] = {}
        self.problems: list[str] = []  # folders that could not be read, shown in the About tab
        for path in dirs:
            try:
                config = RepTokConfig.from_dict(json.loads((path / "config.json").read_text()))
            except (OSError, ValueError, TypeError) as err:
                self.problems.append(f"{path}: {err}")
                continue
            key = str(config.info.get("name") or path.name)
            if key in self.entries:  # two folders with the same name in their config: keep both
                key = f"{key} ({path.name})"
            self.entries[key] = ModelEntry(key=key, path=path, config=config)
        # The main model (train/export.py marks the first it exports) leads: it is the default.
        self.entries = dict(sorted(self.entries.items(), key=lambda kv: not kv[1].is_main))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def labels(self) -> list[str]:
        return list(self.entries)

    def choices(self) -> list[tuple[str, str]]:
        """(shown, value) pairs for a dropdown."""
        return [(e.display, e.key) for e in self.entries.values()]

    @property
    def default(self) -> str | None:
        return next(iter(self.entries), None)

    def entry(self, label: str | None) -> ModelEntry:
        if not self.entries:
            raise ValueError(NO_MODEL_MESSAGE)
        key = label if label in self.entries else self.default
        assert key is not None
        return self.entries[key]

    def get(self, label: str | None = None) -> RepTok:
        entry = self.entry(label)
        with entry.lock:  # one load per model, even if two requests ask at once
            if entry.model is None:
                entry.model = RepTok.from_pretrained(entry.path)
                entry.metrics = read_metrics(entry.model.source or entry.path)
            return entry.model

    def comparable(self) -> ModelEntry:
        """The default model, or its same-budget twin (same backbone and λ, another folder) where one
        ships: the default may have trained longer than the ablation runs it would stand beside, and
        the comparison rows should differ in one thing only."""
        main = self.entry(None)
        sha = main.config.backbone_sha256
        twins = (
            e for e in self.entries.values()
            if e is not main and sha and e.config.backbone_sha256 == sha and e.lam == main.lam
        )  # fmt: skip
        return next(twins, main)

    def backbone_row(self) -> list[ModelEntry]:
        """One tokenizer per backbone at the default model's λ (for its backbone: the default, or its
        same-budget twin), in the paper's order: no prior, then CLIP-, MAE-, DINO-style, then others."""
        if not self.entries:
            return []
        main = self.comparable()
        row: dict[str, ModelEntry] = {main.method: main}
        for e in self.entries.values():
            if e.lam == main.lam:
                row.setdefault(e.method, e)
        return sorted(row.values(), key=lambda e: (METHOD_ORDER.get(e.method, len(METHOD_ORDER)), e.key))

    def lambda_row(self) -> list[ModelEntry]:
        """The tokenizers on the default model's backbone, one per λ (at its λ: the default, or its
        same-budget twin), by increasing λ."""
        if not self.entries:
            return []
        main = self.comparable()
        sha = main.config.backbone_sha256
        row: dict[str, ModelEntry] = {main.lam: main}
        for e in self.entries.values():
            if sha and e.config.backbone_sha256 == sha:
                row.setdefault(e.lam, e)
        return sorted(row.values(), key=lambda e: e.cosine_weight)

    def by_lambda(self, lam: str) -> str | None:
        """The first model whose λ label is `lam`, if any."""
        return next((e.key for e in self.entries.values() if e.lam == lam), None)

    def loaded(self) -> Sequence[ModelEntry]:
        return [e for e in self.entries.values() if e.model is not None]


NO_MODEL_MESSAGE = (
    "No RepTok model was found. Put one in `assets/models/<name>/` (config.json + safetensors), "
    f"or point `{MODELS_ENV}` at a folder holding one: train one with the scripts in `train/`, or make "
    "a random one to try the app with `python -m reptok init --out runs/dev/tiny` "
    f"and start the app with `{MODELS_ENV}=runs/dev python app.py`."
)
