"""The report of bench/efficiency.py: compute to reach a gFD, read off the curves, and the tables."""

from __future__ import annotations

from typing import Any

from bench.common import fmt, machine_line, markdown_table


def flops_to_reach(curve: list[dict[str, Any]], target: float) -> float | None:
    """Training FLOPs at which a curve first gets to gFD ≤ `target`, linear between the two
    checkpoints around the crossing; None if no checkpoint does (not within the budget)."""
    previous = None
    for point in curve:
        if point["gfd"] <= target:
            if previous is None:
                return float(point["train_flops"])
            f0, g0 = previous["train_flops"], previous["gfd"]  # g0 > target >= g1
            f1, g1 = point["train_flops"], point["gfd"]
            return float(f0 + (g0 - target) / (g0 - g1) * (f1 - f0))
        previous = point
    return None


def _tflop(flops: float | None) -> str:
    return "never, within its budget" if flops is None else fmt(flops / 1e12)


def render(payload: dict[str, Any]) -> str:
    sides, metric, s = payload["sides"], payload["metric"], payload["settings"]
    data, peak = payload["data"], payload["peak_gflop_per_s"]
    lines = [
        "## Training efficiency (bench/efficiency.py)",
        "",
        machine_line(payload["machine"]) + f" Dense fp32 matmul: {peak:.1f} GFLOP/s.",
        f"Both generators train on the same {data['train_images']} images ({data['classes']} emoji "
        f"categories) for {s['budget_s']:g} s of training steps each: batch {s['batch_size']}, AdamW lr "
        f"{s['lr']:g}, warmup {s['warmup_steps']}, EMA {s['ema_decay']}, class dropout {s['class_dropout']}, "
        f"flow loss with {s['time_schedule']} times. `{metric}`: Fréchet distance of {data['eval_n']} "
        "class samples (the held-out label mix, EMA weights) to as many held-out images, in train/"
        "evaluate.py's fixed feature space (not FID). FLOPs by FlopCounterMode (matmuls and attention; "
        "a lower bound), training FLOPs = FLOPs of one step × steps.",
        "",
    ]
    rows = []
    for side in sides.values():
        total = side["flops_per_step"] * side["steps"]
        rate = total / side["train_s"] / 1e9 if side["train_s"] else float("nan")
        rows.append([
            side["title"], side["latent"], f"{side['parameters'] / 1e6:.2f} M", fmt(side["flops_per_step"] / 1e9),
            side["steps"], side["images_seen"], fmt(side["train_s"]), fmt(total / 1e12), fmt(rate),
            f"{100 * rate / peak:.0f} %", fmt(side["curve"][-1]["gfd"], 4),
        ])  # fmt: skip
    headers = ["generator", "generates", "parameters", "GFLOP / step", "steps", "images seen", "train s",
               "train TFLOP", "GFLOP/s", "of peak", f"final {metric}"]  # fmt: skip
    lines += [markdown_table(headers, rows), ""]

    rows = []
    for side in sides.values():
        for part, flops in side["sample_flops_per_image"].items():
            role = "inference: the tokenizer's decoder" if part == "decode" else "the generator"
            rows.append(
                [side["title"], f"{part} ({role})", fmt(flops / 1e9), fmt(side["sample_s_per_image"][part])]
            )
    steps = s["eval_steps"] or "the model's defaults"
    lines += [f"Sampling cost per image (steps: {steps}; CFG as the model's defaults):", ""]
    lines += [markdown_table(["generator", "part", "GFLOP / image", "s / image"], rows), ""]
    cache = payload["token_cache"]
    lines += [
        f"RepTok's token cache (encoding the {cache['images']} training images once; not generator "
        f"training, and not counted above): {fmt(cache['flops'] / 1e12)} TFLOP, {fmt(cache['s'])} s.",
        "",
    ]

    rows = [
        [side["title"], p["step"], fmt(p["train_flops"] / 1e12), fmt(p["train_s"]), fmt(p["gfd"], 4)]
        for side in sides.values()
        for p in side["curve"]
    ]
    lines += [
        "Curves:",
        "",
        markdown_table(["generator", "step", "train TFLOP", "train s", metric], rows),
        "",
    ]

    rows = []
    for c in payload["comparison"]:
        ratio = fmt(c["dit_over_reptok"]) + " ×" if c["dit_over_reptok"] else "—"
        who = sides[c["target"].split()[0]]["title"]
        rows.append(
            [
                f"{who}: final",
                fmt(c["gfd"], 4),
                _tflop(c["flops"]["reptok"]),
                _tflop(c["flops"]["dit"]),
                ratio,
            ]
        )
    headers = [f"target {metric}", "value", "RepTok TFLOP to reach", "DiT TFLOP to reach", "DiT / RepTok"]
    lines += [
        "Training compute to reach the same gFD (interpolated between checkpoints):",
        "",
        markdown_table(headers, rows),
    ]
    return "\n".join(lines) + "\n"
