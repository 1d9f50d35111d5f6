"""The model card's two ablation tables, from exported models and their metrics.json.

    python train/ablation_tables.py assets            (or runs/<scale>/export)

Backbones: one row per pre-training method at the main model's λ (PSNR, SSIM, identification, rFD,
gFD, the ridge probe, the tokens' effective rank, the backbone's held-out k-NN accuracy). λ sweep:
every model on the main model's backbone (the same, and the mean cos to the frozen token). With
--seed-twin (the metrics.json of a second seed of one row), a line gives the seed noise. Where the main model had a longer run than the ablations
(train/reproduce.sh cpu), its same-budget twin (same backbone and λ) fills its rows, so each table
compares equal budgets, and the main model gets a line of its own. The Fréchet distances are in the
feature space that metrics.json names (an in-house backbone's features): they are not FID.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reptok.encoder import BACKBONE_METHODS


@dataclass
class Row:
    name: str
    method: str
    lam: float
    backbone_sha256: str
    knn: dict[str, float] | None
    steps: int | None  # stage A optimizer steps
    metrics: dict[str, Any]
    token_map_channels: int = 0  # the decoder's token map (0: the paper's decoder)

    def fd(self, kind: str) -> float | None:
        """rFD / gFD, whatever feature space metrics.json names."""
        keys = [k for k in self.metrics if k.startswith(f"{kind}_")]
        return self.metrics[keys[0]] if keys else None


def read_rows(export: Path) -> list[Row]:
    rows = []
    for config_path in sorted((export / "models").glob("*/config.json")):
        folder = config_path.parent
        metrics_path = folder / "metrics.json"
        if not metrics_path.is_file():
            continue  # not evaluated yet
        config = json.loads(config_path.read_text())
        info = config.get("info", {})
        rows.append(
            Row(
                name=folder.name,
                method=str(info.get("backbone_method", "unknown")),
                lam=float(config["encoder"]["cosine_weight"]),
                backbone_sha256=str(config.get("backbone_sha256", "")),
                knn=info.get("backbone_knn"),
                steps=info.get("total_steps", info.get("steps")),
                metrics=json.loads(metrics_path.read_text()),
                token_map_channels=int(config["decoder"].get("token_map_channels", 0)),
            )
        )
    return rows


def _num(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _space(rows: Sequence[Row]) -> str:
    spaces = sorted({str(r.metrics.get("feature_space")) for r in rows})
    return ", ".join(spaces)


def ablation_rows(rows: Sequence[Row], main: Row) -> list[Row]:
    """The rows the tables compare: the main model only where no same-budget twin stands in for it."""
    twin = any(
        r is not main and r.backbone_sha256 == main.backbone_sha256 and r.lam == main.lam for r in rows
    )
    return [r for r in rows if not (twin and r is main)]


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _quality(r: Row) -> str:
    """The columns both tables share: PSNR | SSIM | identification | rFD | gFD | ridge probe."""
    m = r.metrics
    ridge = f"{_num(m.get('ridge_probe_psnr'), 2)} / {_pct(m.get('ridge_probe_identification'))}"
    return (
        f"{_num(m.get('psnr'), 2)} | {_num(m.get('ssim'), 3)} | {_pct(m.get('identification'))} | "
        f"{_num(r.fd('rFD'), 4)} | {_num(r.fd('gFD'), 4)} | {ridge}"
    )


def _model_cell(r: Row, main: Row) -> str:
    """The row's model name; with its own n where it was measured on another held-out set than the
    main model's (rows kept from an earlier release beside a retrained default model)."""
    n, main_n = r.metrics.get("n"), main.metrics.get("n")
    return f"`{r.name}`" if n == main_n else f"`{r.name}` (n = {n})"


QUALITY_HEADER = "PSNR (dB) | SSIM | identification | rFD | gFD | ridge probe dB / id."


def backbone_table(rows: Sequence[Row], main: Row) -> str:
    picked = {r.method: r for r in rows if r.lam == main.lam and r.method in BACKBONE_METHODS}
    picked.setdefault(main.method, main)
    m = main.metrics
    lines = [
        f"Backbones at λ = {main.lam:g} (held-out, n = {m.get('n')}, identification chance "
        f"{_pct(m.get('identification_chance'))}, FDs in {_space(list(picked.values()))} features):",
        "",
        f"| backbone | model | {QUALITY_HEADER} | token eff. rank | k-NN category / subcategory |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, method_name in BACKBONE_METHODS.items():
        r = picked.get(method)
        if r is None:
            continue
        knn = f"{r.knn['category']:.3f} / {r.knn['subcategory']:.3f}" if r.knn else "–"
        rank = r.metrics.get("token_effective_rank")
        rank_text = "–" if rank is None else f"{rank:.1f} of {r.metrics.get('token_dim', '?')}"
        lines.append(f"| {method_name} | {_model_cell(r, main)} | {_quality(r)} | {rank_text} | {knn} |")
    return "\n".join(lines)


def lambda_table(rows: Sequence[Row], main: Row) -> str:
    sweep = sorted((r for r in rows if r.backbone_sha256 == main.backbone_sha256), key=lambda r: r.lam)
    seen: set[float] = set()
    lines = [
        f"λ sweep on the {BACKBONE_METHODS.get(main.method, main.method)} backbone (held-out, "
        f"FDs in {_space(sweep)} features):",
        "",
        f"| λ | model | {QUALITY_HEADER} | mean cos to frozen token |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in sweep:
        if r.lam in seen:
            continue
        seen.add(r.lam)
        lam = "∞ (frozen)" if math.isinf(r.lam) else f"{r.lam:g}"
        cos = _num(r.metrics.get("cos_to_frozen"), 5)
        lines.append(f"| {lam} | {_model_cell(r, main)} | {_quality(r)} | {cos} |")
    return "\n".join(lines)


def main_line(main: Row) -> str:
    """The default model, trained longer than the rows it stands beside."""
    m = main.metrics
    text = ", ".join(
        f"{name} {_num(value, digits)}"
        for name, value, digits in [
            ("PSNR", m.get("psnr"), 2), ("SSIM", m.get("ssim"), 3), ("rFD", main.fd("rFD"), 4),
            ("gFD", main.fd("gFD"), 4), ("mean cos to frozen token", m.get("cos_to_frozen"), 5),
        ]
    )  # fmt: skip
    if m.get("identification") is not None:
        text += f", identification {_pct(m['identification'])}"
    decoder = (
        f", a decoder with a {main.token_map_channels}-channel token map" if main.token_map_channels else ""
    )
    return (
        f"The default model `{main.name}` (same backbone and λ, stage A {main.steps} steps instead of the "
        f"rows' budget{decoder}): {text}."
    )


def seed_noise_line(rows: Sequence[Row], twin_metrics: Path) -> str:
    """|seed 0 − seed 1| of the row a second seed was trained for (same backbone file and λ)."""
    twin = json.loads(twin_metrics.read_text())
    config = json.loads((twin_metrics.parent / "config.json").read_text())
    lam = float(config["encoder"]["cosine_weight"])
    method = config.get("info", {}).get("backbone_method")
    row = next(
        (
            r
            for r in rows
            if r.method == method
            and r.lam == lam
            and r.steps == config["info"].get("total_steps", config["info"].get("steps"))
        ),
        None,
    )
    if row is None:
        return f"(no exported row matches the seed twin {twin_metrics})"
    diffs = [
        (name, abs(row.metrics[key] - twin[key]), fmt)
        for name, key, fmt in [
            ("PSNR", "psnr", "{:.2f} dB"), ("SSIM", "ssim", "{:.3f}"),
            ("identification", "identification", "{:.1%}"),
            ("ridge probe identification", "ridge_probe_identification", "{:.1%}"),
        ]
        if key in row.metrics and key in twin
    ]  # fmt: skip
    for kind in ("rFD", "gFD"):  # in the feature space metrics.json names
        key = next((k for k in row.metrics if k.startswith(f"{kind}_")), None)
        if key is not None and key in twin:
            diffs.append((kind, abs(row.metrics[key] - twin[key]), "{:.4f}"))
    text = ", ".join(f"{name} {fmt.format(d)}" for name, d, fmt in diffs)
    return f"Seed noise: `{row.name}` trained again with seed 1 differs by {text}."


def main(argv: Sequence[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("export", type=Path, help="a folder with models/<name>/{config,metrics}.json")
    p.add_argument("--main", default="reptok-emoji", help="the main model's name (default reptok-emoji)")
    p.add_argument("--seed-twin", type=Path, default=None, help="metrics.json of a second seed of one row")
    args = p.parse_args(argv)
    rows = read_rows(args.export)
    main_row = next((r for r in rows if r.name == args.main), None)
    if main_row is None:
        sys.exit(f"no evaluated model named {args.main!r} in {args.export / 'models'}")
    compared = ablation_rows(rows, main_row)
    text = backbone_table(compared, main_row) + "\n\n" + lambda_table(compared, main_row)
    if main_row not in compared:
        text += "\n\n" + main_line(main_row)
    if args.seed_twin is not None and args.seed_twin.is_file():
        text += "\n\n" + seed_noise_line(compared, args.seed_twin)
    base = main_row.metrics
    if "baseline_mean_image_psnr" in base:
        text += (
            f"\n\nFor scale: the mean training image, which ignores the token, scores "
            f"{base['baseline_mean_image_psnr']:.2f} dB PSNR / {base['baseline_mean_image_ssim']:.3f} SSIM."
        )
    print(text)
    return text


if __name__ == "__main__":
    main()
