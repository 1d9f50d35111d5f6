"""The model card's pictures: one-token reconstructions, class samples and text samples of a model.

    python train/sample_grids.py --model assets/models/reptok-emoji --data data/emoji64.npz \
        --unseen-data data/emoji64-fluent.npz --out assets/card

writes (PNG, each tile 64 px, on white):

    reconstructions.png   held-out emoji (row 1) over their reconstructions (row 2), in blocks of 16;
                          then the same for a style no training saw (--unseen-data), if given
    class_samples.png     one row per class: its name's first held-out original, then 7 samples
    text_samples.png      one row per prompt: 8 samples

The held-out emoji, classes and prompts are chosen by a fixed rule (evenly spaced over the file),
never by how well they come out, so the pictures show the model as it is.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torchvision.utils import save_image

from reptok.pipeline import RepTok
from train.data import EmojiDataset

CLASSES = [
    "face-smiling", "animal-mammal", "food-fruit", "transport-ground",
    "plant-flower", "sport", "animal-marine", "heart",
]  # fmt: skip
PROMPTS = [
    "red apple", "smiling face with sunglasses", "blue car", "a cat",
    "pizza", "christmas tree", "yellow star", "rocket",
]  # fmt: skip


def _spaced(n_total: int, n: int) -> list[int]:
    return [round(i * (n_total - 1) / max(n - 1, 1)) for i in range(n)]


@torch.inference_mode()
def reconstructions(model: RepTok, data: str | Path, n: int, seed: int) -> torch.Tensor:
    """(2·ceil(n/16)·16, 3, S, S): blocks of 16 originals over their reconstructions."""
    heldout = EmojiDataset(data, split="heldout", image_size=model.image_size)
    idx = _spaced(len(heldout), n)
    real = torch.stack([heldout[i]["image"] for i in idx])  # (n, 3, S, S)
    recon = model.reconstruct(real, seed=seed, output_type="pt").cpu()
    rows = [torch.cat([real[i : i + 16], recon[i : i + 16]]) for i in range(0, n, 16)]
    return torch.cat(rows)


@torch.inference_mode()
def class_rows(
    model: RepTok, data: str | Path, classes: Sequence[str], per_row: int, seed: int
) -> torch.Tensor:
    heldout = EmojiDataset(data, split="heldout", label="subcategory", image_size=model.image_size)
    names = heldout.class_names
    rows = []
    for k, name in enumerate(classes):
        first = next((i for i in range(len(heldout)) if names[heldout.labels[i]] == name), None)
        real = (
            heldout[first]["image"][None]
            if first is not None
            else torch.ones(1, 3, model.image_size, model.image_size)
        )
        samples = model.sample(labels=[name] * (per_row - 1), seed=seed + 100 * k, output_type="pt").cpu()
        rows.append(torch.cat([real, samples]))
    return torch.cat(rows)


@torch.inference_mode()
def text_rows(model: RepTok, prompts: Sequence[str], per_row: int, seed: int) -> torch.Tensor:
    rows = [
        model.sample(prompts=[p] * per_row, seed=seed + 100 * k, output_type="pt").cpu()
        for k, p in enumerate(prompts)
    ]
    return torch.cat(rows)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True, help="emoji .npz (its held-out split is shown)")
    p.add_argument("--unseen-data", default=None, help="emoji .npz of a style no training saw")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--n", type=int, default=32, help="held-out emoji to reconstruct (multiple of 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", nargs="+", default=CLASSES, help="class names, one row each")
    p.add_argument("--prompts", nargs="+", default=PROMPTS, help="prompts, one row each")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    model = RepTok.from_pretrained(args.model)
    args.out.mkdir(parents=True, exist_ok=True)
    grids = [reconstructions(model, args.data, args.n, args.seed)]
    if args.unseen_data:
        grids.append(reconstructions(model, args.unseen_data, 16, args.seed))
    save_image(
        torch.cat(grids).add(1).div(2).clamp(0, 1),
        args.out / "reconstructions.png",
        nrow=16,
        padding=2,
        pad_value=1.0,
    )
    if model.class_generator is not None:
        grid = class_rows(model, args.data, args.classes, 8, args.seed)
        save_image(
            grid.add(1).div(2).clamp(0, 1), args.out / "class_samples.png", nrow=8, padding=2, pad_value=1.0
        )
    if model.text_generator is not None:
        grid = text_rows(model, args.prompts, 8, args.seed)
        save_image(
            grid.add(1).div(2).clamp(0, 1), args.out / "text_samples.png", nrow=8, padding=2, pad_value=1.0
        )
    print(f"wrote {sorted(p.name for p in args.out.glob('*.png'))} to {args.out}")


if __name__ == "__main__":
    main()
