"""What both benchmarks share: the machine, its matmul peak, FLOP counts, timings, and results files.

    info = machine_info(threads=2)            # CPU model, cores, torch version, threads, device
    peak = matmul_gflops(size=2048)           # dense fp32 matmul throughput, measured now
    flops = count_flops(lambda: model(x))     # torch.utils.flop_counter, one call
    stats = time_calls(fn, repeats=10, warmup=2)
    write_results(out_dir, "latency", payload, markdown)   # out_dir/latency.json + a section of RESULTS.md

Timings are measured, written and compared with targets in the tables; they are never asserted
on (tests check that the scripts run and write well-formed results, nothing about speed).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = ROOT / "bench"
DEFAULT_MODEL = ROOT / "assets" / "models" / "reptok-emoji"  # the app's default (embedded) model
RESULTS_MD = "RESULTS.md"
RESULTS_HEADER = (
    "# Benchmark results\n\n"
    "Written by the scripts in `bench/` (see bench/README.md); each section is replaced when its\n"
    "script runs again. Times are wall-clock on the machine named in the section.\n"
)


# ------------------------------------------------------------------------------------- machine


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo; platform's guess elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def machine_info(device: str | torch.device = "cpu") -> dict[str, Any]:
    """Everything a reader needs to compare two result files. Call after torch.set_num_threads."""
    device = torch.device(device)
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info: dict[str, Any] = {
        "cpu": cpu_model(),
        "cores": usable,  # the cores this process may run on (a container's share, not the host's)
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "device": str(device),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def machine_line(info: dict[str, Any]) -> str:
    gpu = f", GPU {info['gpu']}" if "gpu" in info else ""
    return (
        f"Machine: {info['cpu']}, {info['cores']} cores, torch {info['torch']}, "
        f"{info['threads']} threads, device {info['device']}{gpu}; {info['date']}."
    )


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so a timer measures it (nothing to wait for on a CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(size: int = 2048, repeats: int = 5, device: str | torch.device = "cpu") -> float:
    """Measured dense fp32 matmul throughput (GFLOP/s): the best of `repeats` size×size products.

    The "peak" the achieved rates are compared with: what this machine, these threads and this
    torch build reach on the friendliest possible workload, measured in the same run."""
    device = torch.device(device)
    g = torch.Generator(device="cpu").manual_seed(0)
    a, b = (torch.randn(size, size, generator=g).to(device) for _ in range(2))
    torch.matmul(a, b)  # warm-up: thread pool, allocator
    synchronize(device)
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        torch.matmul(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2.0 * size**3 / best / 1e9


# ------------------------------------------------------------------------------ flops, timing


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call (matmuls, convolutions, attention: what FlopCounterMode counts; a
    multiply-add is 2). Elementwise work is not counted, so this is a lower bound."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


@dataclass
class Timing:
    """Seconds per call over `repeats` calls after `warmup`; `first_s` is the very first call
    (cold: lazy loads, allocator growth), reported apart."""

    median_s: float
    p90_s: float
    min_s: float
    first_s: float
    repeats: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile q in [0, 100] (numpy's default method)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def time_calls(
    fn: Callable[[], Any], *, repeats: int, warmup: int, device: str | torch.device = "cpu"
) -> Timing:
    device = torch.device(device)
    times: list[float] = []
    first = math.nan
    for i in range(max(warmup, 1) + repeats):  # at least one warm-up: the first call is cold
        start = time.perf_counter()
        fn()
        synchronize(device)
        elapsed = time.perf_counter() - start
        if i == 0:
            first = elapsed
        if i >= max(warmup, 1):
            times.append(elapsed)
    return Timing(
        median_s=statistics.median(times),
        p90_s=percentile(times, 90),
        min_s=min(times),
        first_s=first,
        repeats=repeats,
    )


# ------------------------------------------------------------------------------------ results


def fmt(value: float | None, digits: int = 3) -> str:
    """A table cell: '—' for missing, otherwise `digits` significant figures."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:.{digits}g}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_results(out_dir: str | Path, name: str, payload: dict[str, Any], markdown: str) -> Path:
    """out_dir/<name>.json, and the <name> section of out_dir/RESULTS.md replaced (or added).

    Sections are delimited by HTML comments, so the two benchmarks update one file without
    touching each other's results."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / f"{name}.json"
    json_path.write_text(json.dumps(payload, indent=2, allow_nan=False) + "\n")
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    section = f"{begin}\n{markdown.strip()}\n{end}\n"
    md_path = out_dir / RESULTS_MD
    text = md_path.read_text() if md_path.is_file() else RESULTS_HEADER
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        text = head + section + rest.split(end, 1)[1].lstrip("\n")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    md_path.write_text(text)
    return json_path


def finite(value: float) -> float | None:
    """JSON has no NaN or infinity: missing measurements are written as null."""
    return value if math.isfinite(value) else None
