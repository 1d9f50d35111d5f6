"""Class and text samples of one model across classifier-free guidance scales, guidance intervals,
generator temperatures and sampling seeds, on the held-out split.

    python train/guidance_sweep.py --model assets/models/reptok-emoji --data data/emoji64.npz \
        --features assets/features --label subcategory --cfg-scale 1 1.5 3 5 --temperature 1 0.7 \
        --cfg-interval 0.3,0.9 0,1

Each setting draws its samples from the same seeds that train/evaluate.py draws (the held-out
label mix for classes, the held-out captions for text) and scores them with its definitions:
gFD and the k-NN class probe for class samples, text gFD and retrieval top-1/top-5 for text
samples, in the --features space (Fréchet distances in in-house features, not FID). Guidance
and a temperature T < 1 on the generator's noise (SamplingConfig.generate_temperature) both
trade diversity for fidelity to the condition: the probe and retrieval rise, and the gFD says
what that costs in spread; the guidance interval (--cfg-interval, each generator's own by default)
says over which part of the flow guidance acts, and --seed 0 1 2 measures the sampling noise. This
is how the shipped cfg_scale, cfg_interval, text_cfg_interval and generate_temperature are chosen:
see MODEL_CARD.md. The table goes to stdout and, with --out, the JSON beside it.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reptok.metrics import FeatureSpace
from reptok.pipeline import RepTok
from train.data import EmojiDataset, stack_images
from train.evaluate import feature_space
from train.sample_metrics import SampleRun, class_sample_metrics, text_sample_metrics


def sweep(
    model: RepTok,
    heldout: EmojiDataset,
    train: EmojiDataset,
    n: int,
    space: FeatureSpace,
    scales: Sequence[float],
    *,
    temperatures: Sequence[float] = (1.0,),
    intervals: Sequence[tuple[float, float] | None] = (None,),
    conds: Sequence[str] = ("class", "text"),
    steps: int | None = None,
    seeds: Sequence[int] = (0,),
    batch_size: int = 64,
    cache_dir: Path | None = None,
) -> list[dict[str, Any]]:
    """One row per (condition, guidance interval, temperature, scale, sampling seed): the metrics
    train/evaluate.py reports for those samples, drawn at that guidance scale, guided for t in that
    interval (None: the model's own for that generator), at that generator temperature and from that
    seed (0 is evaluate.py's; more seeds measure the sampling noise). `cache_dir`: where the class
    probe's bank of training-image features is kept (`sample_metrics.probe_bank`); None: computed per row."""
    idx = list(range(min(n, len(heldout))))
    real = stack_images(heldout, idx)  # (n, 3, S, S)
    real_feats = space.features(real)
    rows = []
    for cond in conds:
        if cond == "class" and model.class_generator is None:
            continue
        if cond == "class" and model.config.class_names != heldout.class_names:
            raise SystemExit("the class generator's classes are not this --label's; pass the right --label")
        if cond == "text" and model.text_generator is None:
            continue
        for interval, temperature, scale, seed in itertools.product(intervals, temperatures, scales, seeds):
            start = time.perf_counter()
            interval = interval or model.config.sampling.guidance_interval(cond)
            run = SampleRun(
                steps, seed, batch_size, cfg_scale=scale, temperature=temperature, cfg_interval=interval
            )
            if cond == "class":
                m = class_sample_metrics(
                    model, heldout, train, idx, real, space, run, real_feats=real_feats, bank_cache=cache_dir
                )
            else:
                m = text_sample_metrics(model, heldout, idx, real_feats, space, run)
            row = {
                "cond": cond, "cfg_scale": scale, "cfg_interval": list(interval), "temperature": temperature,
                "seed": seed, "seconds": round(time.perf_counter() - start, 1), **m,
            }  # fmt: skip
            rows.append(row)
            print(json.dumps(row), flush=True)
    return rows


def markdown(rows: Sequence[dict[str, Any]], n: int) -> str:
    out = [f"{n} held-out images."]
    for cond in ("class", "text"):
        part = [r for r in rows if r["cond"] == cond]
        if not part:
            continue
        keys = [k for k in part[0] if k not in ("cond", "cfg_scale", "cfg_interval", "temperature")]
        out += ["", f"{cond} samples:", "", "| cfg scale | interval | T | " + " | ".join(keys) + " |"]
        out.append("|" + "---|" * (3 + len(keys)))
        for r in part:
            vals = [f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k]) for k in keys]
            lo, hi = r["cfg_interval"]
            out.append(
                f"| {r['cfg_scale']} | [{lo:g}, {hi:g}] | {r['temperature']} | " + " | ".join(vals) + " |"
            )
    return "\n".join(out)


def interval_arg(text: str) -> tuple[float, float]:
    """LO,HI -> (LO, HI): "0.3,0.9" -> (0.3, 0.9), for --cfg-interval."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected LO,HI (e.g. 0.3,0.9), got {text!r}") from err
    if not 0.0 <= lo <= hi <= 1.0:
        raise argparse.ArgumentTypeError(f"need 0 <= LO <= HI <= 1, got {text!r}")
    return lo, hi


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a RepTok model folder")
    p.add_argument("--data", required=True, help="the .npz written by train/prepare_emoji.py")
    p.add_argument(
        "--features", required=True, help="in-house backbone folder whose features score the samples"
    )
    p.add_argument("--label", choices=["category", "subcategory"], default="category")
    p.add_argument("--n", type=int, default=1000, help="held-out images, at most (default 1000)")
    p.add_argument("--cfg-scale", type=float, nargs="+", default=[1.0, 1.5, 3.0])
    p.add_argument(
        "--temperature", type=float, nargs="+", default=[1.0], help="generator noise scales T (default: 1)"
    )
    p.add_argument(
        "--cfg-interval", type=interval_arg, nargs="+", default=[None], metavar="LO,HI",
        help="guide only for t in [LO, HI] (default: the model's own interval for each generator)",
    )  # fmt: skip
    p.add_argument("--cond", nargs="+", choices=["class", "text"], default=["class", "text"])
    p.add_argument("--steps", type=int, help="decoder steps (default: the model's)")
    p.add_argument(
        "--seed", type=int, nargs="+", default=[0],
        help="sampling seeds, one row each (default 0, evaluate.py's; several measure the sampling noise)",
    )  # fmt: skip
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--out", default=None, help="write the rows as JSON here")
    p.add_argument(
        "--cache-dir", type=Path, default=None,
        help="keep the class probe's bank of training features here (default: a temporary folder, "
        "so it is computed once per sweep rather than once per row)",
    )  # fmt: skip
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = parse_args(argv)
    model = RepTok.from_pretrained(args.model)
    heldout = EmojiDataset(args.data, split="heldout", label=args.label, image_size=model.image_size)
    train = EmojiDataset(args.data, split="train", label=args.label, image_size=model.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        rows = sweep(
            model, heldout, train, args.n, feature_space(args.features), args.cfg_scale,
            temperatures=args.temperature, intervals=args.cfg_interval, conds=args.cond, steps=args.steps, seeds=args.seed,
            batch_size=args.batch_size, cache_dir=args.cache_dir or Path(tmp),
        )  # fmt: skip
    print(markdown(rows, min(args.n, len(heldout))))
    if args.out:
        Path(args.out).write_text(
            json.dumps({"model": args.model, "label": args.label, "rows": rows}, indent=2) + "\n"
        )
    return rows


if __name__ == "__main__":
    main()
