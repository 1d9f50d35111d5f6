"""Datasets for the training scripts: the emoji .npz of prepare_emoji.py, or a folder of one's own images.

Both return the same items, so a training script does not care which it got:
``{"image": (3, H, W) float in [-1, 1], "label": int, "caption": str, "name": str, "code": str,
"index": int}``. `build_dataset(spec, ...)` picks the right one from a path.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from tqdm import tqdm

from reptok.images import ImageLoadError, load_image

Split = Literal["train", "heldout", "all"]
Label = Literal["category", "subcategory"]

IMAGE_EXTENSIONS: frozenset[str] = frozenset({".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp"})
HELDOUT_PERCENT = 10  # the same rule as train/prepare_emoji.py, so both sources split alike


def split_for_key(key: str) -> str:
    """'heldout' or 'train' from a hash of `key` alone: stable across runs, machines and file order."""
    bucket = int(hashlib.sha1(key.encode("utf-8")).hexdigest(), 16) % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


def image_to_tensor(image: Image.Image, image_size: int) -> torch.Tensor:
    """RGB PIL image -> (3, image_size, image_size) float in [-1, 1]: center square crop, Lanczos resize."""
    width, height = image.size
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    image = image.crop((left, top, left + side, top + side))
    if side != image_size:
        image = image.resize((image_size, image_size), Image.Resampling.LANCZOS)  # antialiased
    pixels = torch.from_numpy(np.array(image, dtype=np.uint8))  # (H, W, 3); np.array copies: writable
    return pixels.permute(2, 0, 1).float().div(127.5).sub(1.0)


def _check_split(split: str) -> None:
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"split must be 'train', 'heldout' or 'all', not {split!r}")


@dataclass
class EmojiData:
    """The arrays of an emoji .npz, as written by train/prepare_emoji.py."""

    images: np.ndarray  # (N, 64, 64, 3) uint8, RGB composited over white
    style: np.ndarray  # (N,) str: "google" / "twitter"
    code: np.ndarray  # (N,) str: unified code, e.g. "1F600"; the split key
    category: np.ndarray  # (N,) str
    subcategory: np.ndarray  # (N,) str
    name: np.ndarray  # (N,) str, lowercase
    caption: np.ndarray  # (N,) str
    split: np.ndarray  # (N,) str: "train" / "heldout"
    category_names: list[str]  # sorted over the whole file, so label ids agree between splits
    subcategory_names: list[str]
    meta: dict[str, Any]  # package names, versions, licenses, counts

    @classmethod
    def load(cls, path: str | Path) -> EmojiData:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"Emoji data not found: {path} (make it with train/prepare_emoji.py)")
        with np.load(path, allow_pickle=False) as npz:  # plain arrays only: never unpickle a data file
            arrays = {key: npz[key] for key in npz.files}
        return cls(
            images=arrays["images"],
            style=arrays["style"],
            code=arrays["code"],
            category=arrays["category"],
            subcategory=arrays["subcategory"],
            name=arrays["name"],
            caption=arrays["caption"],
            split=arrays["split"],
            category_names=arrays["category_names"].tolist(),
            subcategory_names=arrays["subcategory_names"].tolist(),
            meta=json.loads(str(arrays["meta"])),
        )

    def __len__(self) -> int:
        return len(self.images)


class EmojiDataset(Dataset):
    """Emoji images of one split, labelled by category or subcategory."""

    def __init__(
        self,
        path: str | Path,
        split: Split = "train",
        label: Label = "category",
        image_size: int = 64,
        styles: Sequence[str] | None = None,
    ) -> None:
        _check_split(split)
        if label not in ("category", "subcategory"):
            raise ValueError(f"label must be 'category' or 'subcategory', not {label!r}")
        data = EmojiData.load(path)
        keep = np.ones(len(data), dtype=bool) if split == "all" else data.split == split
        if styles is not None:
            unknown = sorted(set(styles) - set(data.style.tolist()))
            if unknown:
                raise ValueError(f"Unknown styles {unknown}; the file has {sorted(set(data.style.tolist()))}")
            keep &= np.isin(data.style, list(styles))
        self.rows = np.flatnonzero(keep)  # positions in the file
        if len(self.rows) == 0:
            raise ValueError(f"No emoji in {path} for split={split!r}, styles={styles}")

        self.data = data
        self.image_size = image_size
        self.class_names: list[str] = data.category_names if label == "category" else data.subcategory_names
        class_index = {name: i for i, name in enumerate(self.class_names)}
        values = data.category if label == "category" else data.subcategory
        self.labels: list[int] = [class_index[v] for v in values[self.rows].tolist()]
        # Subcategory labels: each category as the union of its subcategories (whole file, so
        # every split agrees), for RepTokConfig.class_groups; None for category labels.
        self.class_groups: dict[str, list[str]] | None = None
        if label == "subcategory":
            pairs = set(zip(data.category.tolist(), data.subcategory.tolist(), strict=True))
            self.class_groups = {
                c: sorted(sub for cat, sub in pairs if cat == c) for c in data.category_names
            }
        self.captions: list[str] = data.caption[self.rows].tolist()
        self.names: list[str] = data.name[self.rows].tolist()
        self.codes: list[str] = data.code[self.rows].tolist()

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        pixels = self.data.images[self.rows[index]]  # (64, 64, 3) uint8
        if pixels.shape[0] == self.image_size:
            image = torch.from_numpy(pixels.copy()).permute(2, 0, 1).float().div(127.5).sub(1.0)
        else:
            image = image_to_tensor(Image.fromarray(pixels), self.image_size)
        return {
            "image": image,
            "label": self.labels[index],
            "caption": self.captions[index],
            "name": self.names[index],
            "code": self.codes[index],
            "index": index,
        }


def _read_captions(path: Path) -> dict[str, str]:
    """{relative posix path: caption} from JSON lines ({"file", "caption"}) or a CSV with file,caption."""
    if not path.is_file():
        raise FileNotFoundError(f"Captions file not found: {path}")
    rows: list[dict[str, Any]]
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as file:
            rows = list(csv.DictReader(file))
    elif path.suffix.lower() in (".jsonl", ".json"):
        lines = path.read_text(encoding="utf-8").splitlines()
        rows = [json.loads(line) for line in lines if line.strip()]
    else:
        raise ValueError(f"Captions file must be .jsonl or .csv: {path}")
    if rows and not {"file", "caption"} <= set(rows[0]):
        raise ValueError(f"Captions file {path} needs the fields 'file' and 'caption', got {sorted(rows[0])}")
    return {Path(str(row["file"])).as_posix(): str(row["caption"]) for row in rows}


class ImageFolderDataset(Dataset):
    """A person's own images: root/<class_name>/<image>; class names are the sorted folder names.

    Files are opened only through `reptok.images.load_image`. Bad files are found lazily (a scan at
    construction would be too slow for big folders): `__getitem__` skips to the next readable file
    and counts the bad one in `skipped`. With DataLoader workers each worker counts in its own copy;
    call `verify()` first for an exact count and a clean file list.

    The split hashes each file's path relative to root (10 % held out), like the emoji split.
    Captions come from `captions` (or root/captions.jsonl or root/captions.csv if present);
    files without one get their class name.
    """

    def __init__(
        self,
        root: str | Path,
        split: Split = "all",
        image_size: int = 64,
        captions: str | Path | None = None,
    ) -> None:
        _check_split(split)
        self.root = Path(root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"Data directory not found: {self.root}")
        by_class: dict[str, list[Path]] = {}
        for class_dir in sorted(p for p in self.root.iterdir() if p.is_dir() and not p.name.startswith(".")):
            files = sorted(
                p
                for p in class_dir.rglob("*")
                if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
            )
            if files:
                by_class[class_dir.name] = files
        if not by_class:
            raise ValueError(
                f"No images found under {self.root}: expected root/<class>/<image>.png "
                f"(extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})"
            )
        # Class ids come from every file, before the split, so they agree between splits.
        self.class_names: list[str] = sorted(by_class)

        if captions is None:
            found = [self.root / n for n in ("captions.jsonl", "captions.csv") if (self.root / n).is_file()]
            captions = found[0] if found else None
        caption_of = _read_captions(Path(captions)) if captions is not None else {}

        self.image_size = image_size
        self.files: list[Path] = []
        self.labels: list[int] = []
        self.captions: list[str] = []
        for label, class_name in enumerate(self.class_names):
            for file in by_class[class_name]:
                relative = file.relative_to(self.root).as_posix()
                if split != "all" and split_for_key(relative) != split:
                    continue
                self.files.append(file)
                self.labels.append(label)
                self.captions.append(caption_of.get(relative, class_name.replace("_", " ")))
        if not self.files:
            raise ValueError(f"No images under {self.root} fall in split={split!r}; use split='all'")
        self.skipped = 0  # unreadable files met so far (lazily, or by verify())
        self._bad: set[int] = set()

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        count = len(self.files)
        for offset in range(count):
            position = (index + offset) % count  # a bad file hands over to the next readable one
            if position in self._bad:
                continue
            try:
                image = load_image(self.files[position])
            except ImageLoadError:
                self._bad.add(position)
                self.skipped += 1
                continue
            return self._item(position, image)
        raise RuntimeError(f"None of the {count} image files under {self.root} can be read")

    def _item(self, position: int, image: Image.Image) -> dict[str, Any]:
        file = self.files[position]
        return {
            "image": image_to_tensor(image, self.image_size),
            "label": self.labels[position],
            "caption": self.captions[position],
            "name": file.stem,
            "code": file.relative_to(self.root).as_posix(),
            "index": position,
        }

    def verify(self) -> int:
        """Open every file once and drop the unreadable ones; returns how many were dropped."""
        good = []
        for position, file in enumerate(tqdm(self.files, desc="verifying images", unit="img")):
            try:
                load_image(file)
                good.append(position)
            except ImageLoadError:
                pass
        dropped = len(self.files) - len(good)
        self.skipped += len(set(range(len(self.files))) - set(good) - self._bad)  # count each file once
        self.files = [self.files[i] for i in good]
        self.labels = [self.labels[i] for i in good]
        self.captions = [self.captions[i] for i in good]
        self._bad = set()  # positions shifted; every remaining file is readable
        if not self.files:
            raise ValueError(f"No readable images under {self.root}")
        return dropped


def build_dataset(
    spec: str | Path, split: Split = "train", label: Label = "category", image_size: int = 64
) -> Dataset:
    """An emoji .npz from prepare_emoji.py, or a folder root/<class>/<image> (label is then the folder)."""
    path = Path(spec)
    if path.is_dir():
        return ImageFolderDataset(path, split=split, image_size=image_size)
    if path.suffix == ".npz":
        return EmojiDataset(path, split=split, label=label, image_size=image_size)
    if not path.exists():
        raise FileNotFoundError(f"Data not found: {path} (give an .npz from prepare_emoji.py or a folder)")
    raise ValueError(f"Unsupported data spec {path}: give an .npz from prepare_emoji.py or a folder")


def stack_images(dataset: EmojiDataset, indices: Sequence[int]) -> torch.Tensor:
    """The dataset's images at `indices`, stacked: (N, 3, H, W) in [-1, 1]."""
    return torch.stack([dataset[i]["image"] for i in indices])
