"""Build the embedded default data set: 64×64 emoji from the npm packages of iamcal/emoji-data.

    python train/prepare_emoji.py --out data/emoji64.npz

The npm part (``npm pack`` into a cache, safe extraction) lives in `main()`; everything after
that (`build_dataset`, `write_npz`) works on already-extracted folders, so tests need no network.

Only base emoji are used (no skin-tone variations). Images are RGBA and are composited over
white. The train/held-out split is a hash of the emoji code, so an emoji held out in one style
is held out in every style and the split never depends on the order of the files.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

# Pinned so the data set is reproducible; `npm view emoji-datasource-google version` gave 16.0.0.
PACKAGE_VERSION = "16.0.0"
STYLES: tuple[str, ...] = ("google", "twitter")
IMAGE_SIZE = 64
HELDOUT_PERCENT = 10  # sha1(code) mod 100 below this -> heldout: ~10 % of the codes

# package.json says "MIT" for both, but that covers the data (names, codes); the images are the
# vendors'. Their terms, as the packages' README states them, are recorded separately in `meta`.
IMAGE_LICENSES: dict[str, str] = {
    "google": "Apache-2.0 (Noto Emoji, Google)",
    "twitter": "CC-BY-4.0 (Twemoji graphics, Twitter / jdecked)",
}
# How each style is named in the README's license list ("* Android/Google/Noto images, are ...").
_README_STYLE_WORDS: dict[str, str] = {"google": "google", "twitter": "twitter"}


def package_name(style: str) -> str:
    return f"emoji-datasource-{style}"


def split_for_code(code: str) -> str:
    """'heldout' or 'train', from a hash of the emoji code alone (same answer in every style)."""
    bucket = int(hashlib.sha1(code.encode("utf-8")).hexdigest(), 16) % 100
    return "heldout" if bucket < HELDOUT_PERCENT else "train"


def make_caption(name: str, short_names: list[str]) -> str:
    """'grinning face, grinning': the name, then the short names that add words to it."""
    parts = [name]
    for short in short_names:
        words = short.replace("_", " ").replace("-", " ").strip().lower()
        if words and words not in parts:
            parts.append(words)
    return ", ".join(parts)


def composite_on_white(png_bytes: bytes, size: int = IMAGE_SIZE) -> np.ndarray:
    """Decode a PNG (any mode) and alpha-composite it over white: (size, size, 3) uint8."""
    with Image.open(io.BytesIO(png_bytes)) as image:
        image.load()  # decode now, so a truncated file fails here and is counted as unreadable
        rgba = image.convert("RGBA")  # palette + tRNS, LA, RGB all become straight RGBA
    if rgba.size != (size, size):
        rgba = rgba.resize((size, size), Image.Resampling.LANCZOS)
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"), dtype=np.uint8)


def _package_root(path: Path) -> Path:
    """Accept both the extracted `package/` folder and the folder that contains it."""
    return path / "package" if (path / "package" / "emoji.json").is_file() else path


def _readme_image_license(root: Path, style: str) -> str | None:
    """The README's own sentence about this style's image license, kept verbatim for the record."""
    readme = root / "README.md"
    if not readme.is_file():
        return None
    for line in readme.read_text(encoding="utf-8", errors="replace").splitlines():
        lower = line.lower()
        if line.lstrip().startswith("*") and "images" in lower and _README_STYLE_WORDS[style] in lower:
            return line.lstrip("* ").strip()
    return None


def build_dataset(package_dirs: dict[str, Path], size: int = IMAGE_SIZE) -> dict[str, np.ndarray]:
    """Parse extracted emoji-datasource packages ({style: folder}) into the arrays of the .npz."""
    records: dict[str, list[str]] = {k: [] for k in ("style", "code", "category", "subcategory", "name")}
    records["caption"], records["split"] = [], []
    images: list[np.ndarray] = []
    skipped: Counter[str] = Counter()
    packages: dict[str, dict[str, object]] = {}

    for style in sorted(package_dirs):
        root = _package_root(Path(package_dirs[style]))
        package_json = json.loads((root / "package.json").read_text(encoding="utf-8"))
        packages[style] = {
            "name": package_json.get("name"),
            "version": package_json.get("version"),
            "license": package_json.get("license"),
            "image_license": IMAGE_LICENSES.get(style, "unknown"),
            "image_license_readme": _readme_image_license(root, style),
        }
        entries = json.loads((root / "emoji.json").read_text(encoding="utf-8"))
        entries.sort(key=lambda e: (e.get("sort_order", 0), e["unified"]))  # stable, file-order free
        image_dir = root / "img" / style / str(size)
        for entry in tqdm(entries, desc=f"compositing {style}", unit="img"):
            if not entry.get(f"has_img_{style}", True):
                skipped["no_image_in_style"] += 1
                continue
            path = image_dir / entry["image"]
            try:
                pixels = composite_on_white(path.read_bytes(), size)
            except FileNotFoundError:
                skipped["missing"] += 1
                continue
            except (OSError, UnidentifiedImageError, SyntaxError, ValueError):
                skipped["unreadable"] += 1  # PIL raises all of these for corrupt PNGs
                continue
            name = (entry.get("name") or entry.get("short_name") or entry["unified"]).lower()
            images.append(pixels)
            records["style"].append(style)
            records["code"].append(entry["unified"])
            records["category"].append(entry.get("category") or "Unknown")
            records["subcategory"].append(entry.get("subcategory") or "unknown")
            records["name"].append(name)
            records["caption"].append(make_caption(name, list(entry.get("short_names") or [])))
            records["split"].append(split_for_code(entry["unified"]))

    if not images:
        raise ValueError(f"No emoji images found in {sorted(package_dirs)}")
    meta = {
        "source": "npm packages of https://github.com/iamcal/emoji-data, base emoji only",
        "image_size": size,
        "heldout_rule": f"int(sha1(code).hexdigest(), 16) % 100 < {HELDOUT_PERCENT}",
        "packages": packages,
        "counts": {
            "images": len(images),
            "per_style": dict(Counter(records["style"])),
            "heldout": records["split"].count("heldout"),
            "codes": len(set(records["code"])),
        },
        "skipped": {"missing": 0, "unreadable": 0, "no_image_in_style": 0, **skipped},
    }
    arrays = {"images": np.stack(images).astype(np.uint8)}  # (N, size, size, 3)
    arrays.update({key: np.array(values, dtype=str) for key, values in records.items()})
    arrays["category_names"] = np.array(sorted(set(records["category"])), dtype=str)
    arrays["subcategory_names"] = np.array(sorted(set(records["subcategory"])), dtype=str)
    arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    return arrays


def write_npz(arrays: dict[str, np.ndarray], out: Path) -> None:
    """One compressed file, all strings as unicode arrays so it loads with allow_pickle=False."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")  # write then rename: no half-written data set
    np.savez_compressed(tmp, **arrays)
    tmp.replace(out)


def npm_pack(name: str, version: str, cache_dir: Path) -> Path:
    """`npm pack name@version` into the cache, unless the tarball is already there."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / f"{name}-{version}.tgz"
    if tarball.is_file():
        print(f"cached: {tarball}")
        return tarball
    print(f"npm pack {name}@{version} -> {cache_dir}")
    cmd = ["npm", "pack", f"{name}@{version}", "--pack-destination", str(cache_dir), "--silent"]
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    if not tarball.is_file():
        raise FileNotFoundError(f"npm pack did not produce {tarball}")
    return tarball


def _is_safe_member(member: tarfile.TarInfo, wanted: tuple[str, ...]) -> bool:
    """Regular files under package/ only: no absolute paths, no '..', no links or devices."""
    parts = Path(member.name).parts
    return (
        member.isfile()
        and not Path(member.name).is_absolute()
        and ".." not in parts
        and len(parts) >= 2
        and parts[0] == "package"
        and member.name.startswith(wanted)
    )


def extract_package(tarball: Path, dest: Path, style: str, size: int = IMAGE_SIZE) -> Path:
    """Extract the files we read (json, README, img/<style>/<size>/) to dest/package; returns it."""
    root = dest / "package"
    done = dest / ".extracted"
    if done.is_file() and done.read_text() == tarball.name:
        return root
    wanted = (
        "package/emoji.json",
        "package/package.json",
        "package/README.md",
        f"package/img/{style}/{size}/",
    )
    with tarfile.open(tarball, "r:gz") as tar:
        for member in tar:
            if not _is_safe_member(member, wanted):
                continue
            # Written by hand rather than tar.extract: only the checked name, no modes or owners.
            target = dest.joinpath(*Path(member.name).parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            source = tar.extractfile(member)
            if source is not None:
                target.write_bytes(source.read())
    done.write_text(tarball.name)
    return root


def print_summary(arrays: dict[str, np.ndarray]) -> None:
    meta = json.loads(str(arrays["meta"]))
    print(f"images: {len(arrays['images'])}  codes: {meta['counts']['codes']}")
    for style, count in sorted(Counter(arrays["style"].tolist()).items()):
        print(f"  {style:8s} {count}")
    print(f"skipped: {meta['skipped']}")
    print(f"categories ({len(arrays['category_names'])}):")
    for category, count in sorted(Counter(arrays["category"].tolist()).items()):
        print(f"  {category:20s} {count}")
    print(f"subcategories: {len(arrays['subcategory_names'])}")
    heldout = float(np.mean(arrays["split"] == "heldout"))
    print(f"heldout fraction: {heldout:.3f}")
    for style, info in meta["packages"].items():
        print(f"license {style}: package {info['license']}, images {info['image_license']}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("data/emoji64.npz"), help="output .npz path")
    parser.add_argument(
        "--cache-dir", type=Path, default=Path("data/npm-cache"), help="where npm tarballs are kept"
    )
    parser.add_argument(
        "--version", default=PACKAGE_VERSION, help=f"emoji-datasource-* version (default {PACKAGE_VERSION})"
    )
    parser.add_argument(
        "--styles", nargs="+", default=list(STYLES), choices=STYLES, help="which image sets to include"
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()
    package_dirs: dict[str, Path] = {}
    for style in args.styles:
        name = package_name(style)
        tarball = npm_pack(name, args.version, args.cache_dir)
        package_dirs[style] = extract_package(tarball, args.cache_dir / f"{name}-{args.version}", style)
    arrays = build_dataset(package_dirs)
    write_npz(arrays, args.out)
    print_summary(arrays)
    size_mb = args.out.stat().st_size / 2**20
    print(f"wrote {args.out} ({size_mb:.1f} MiB) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
