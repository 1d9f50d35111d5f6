"""Build the embedded default data set: 64×64 emoji in several styles, from npm packages.

    python train/prepare_emoji.py --out data/emoji64.npz                          # every style
    python train/prepare_emoji.py --out data/emoji64.npz --styles google twitter  # the first set

Two kinds of package: iamcal/emoji-data's `emoji-datasource-{google,twitter}` (64×64 PNG and the
`emoji.json` catalog of codes, names and categories), and packages of one SVG per emoji code
(OpenMoji, Fluent Emoji), rasterised with resvg. Every image is keyed to the catalog's `unified`
code and takes its name and category from there; SVGs whose code is not in the catalog are dropped.

The npm part (``npm pack`` into a cache, safe extraction: `train/npm_tarballs.py`) runs in `main()`;
everything after that (`build_dataset`, `write_npz`) works on already-extracted folders, so tests
need no network. Images become RGB on white in `train/rasterize.py`.

Only base emoji are used (no skin-tone variations). Images are RGBA and are composited over
white. The train/held-out split is a hash of the emoji code, so an emoji held out in one style
is held out in every style and the split never depends on the order of the files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
from PIL import UnidentifiedImageError
from tqdm import tqdm

from train.files import atomic_path
from train.npm_tarballs import extract_package, npm_pack, tarball_stem
from train.rasterize import composite_on_white, render_svg_on_white

# Pinned so the data set is reproducible; `npm view emoji-datasource-google version` gave 16.0.0.
PACKAGE_VERSION = "16.0.0"
DATASOURCE_STYLES: tuple[str, ...] = ("google", "twitter")
# The catalog alone (emoji.json, no per-emoji images), for builds with no datasource style.
CATALOG_PACKAGE = "emoji-datasource"
IMAGE_SIZE = 64
HELDOUT_PERCENT = 10  # sha1(code) mod 100 below this -> heldout: ~10 % of the codes


@dataclass(frozen=True)
class SvgStyle:
    """An npm package with one `<code>.svg` per emoji (code points in hex, '-' or '_' between)."""

    package: str
    version: str  # pinned, as PACKAGE_VERSION
    image_dir: str  # folder inside the package that holds the SVGs
    attribution: str  # what a copy of the images must say


# Blobmoji is not here: `@svgmoji/blob` has shipped no SVGs since 3.0.0 (its images moved to a
# CDN), and 3.1.0 and 3.2.0 are the only versions left on the registry.
SVG_STYLES: dict[str, SvgStyle] = {
    "openmoji": SvgStyle(
        "openmoji",
        "17.0.0",
        "color/svg",
        "All emojis designed by OpenMoji – the open-source emoji and icon project. License: CC BY-SA 4.0",
    ),
    # EmojiOne 2.2.7, the last release whose artwork is CC BY 4.0 (3.0 moved to a non-free license).
    "emojione": SvgStyle(
        "emojione",
        "2.2.7",
        "assets/svg",
        "Emoji artwork provided by EmojiOne (https://www.emojione.com), CC BY 4.0",
    ),
    # The flat set (one colour SVG per code) of Microsoft's Fluent Emoji, named by code by LobeHub;
    # `fluentui-emoji` names its files by words instead, which would need a second mapping.
    "fluent": SvgStyle(
        "@lobehub/fluent-emoji-flat",
        "1.1.0",
        "assets",
        "Fluent Emoji by Microsoft (https://github.com/microsoft/fluentui-emoji), MIT License",
    ),
}
STYLES: tuple[str, ...] = (*DATASOURCE_STYLES, *SVG_STYLES)
# What the embedded models train on. Fluent Emoji is kept out: it is the style no training sees, built
# into its own file (--styles fluent --out data/emoji64-fluent.npz) and scored apart by evaluate.py.
TRAINING_STYLES: tuple[str, ...] = ("google", "twitter", "openmoji")

# package.json says "MIT" for both, but that covers the data (names, codes); the images are the
# vendors'. Their terms, as the packages' README states them, are recorded separately in `meta`.
IMAGE_LICENSES: dict[str, str] = {
    "google": "Apache-2.0 (Noto Emoji, Google)",
    "twitter": "CC-BY-4.0 (Twemoji graphics, Twitter / jdecked)",
    "openmoji": "CC-BY-SA-4.0 (OpenMoji, HfG Schwäbisch Gmünd and contributors)",
    "emojione": "CC-BY-4.0 (EmojiOne 2.2.7 artwork, Ranks.com)",
    "fluent": "MIT (Fluent Emoji flat, Microsoft; package by LobeHub)",
}
SKIN_TONES = frozenset({"1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF"})
# How each style is named in the README's license list ("* Android/Google/Noto images, are ...").
_README_STYLE_WORDS: dict[str, str] = {"google": "google", "twitter": "twitter"}


def package_name(style: str) -> str:
    return SVG_STYLES[style].package if style in SVG_STYLES else f"emoji-datasource-{style}"


def code_key(code: str) -> str | None:
    """The form codes are matched in: '1f3f4-e0067_e0062' -> '1F3F4-E0067-E0062-E007F'.

    Upper-case hex, at least 4 digits, '-' between, no FE0F variation selectors (datasource writes
    fully-qualified codes, some vendors drop them; no two catalog codes differ only by FE0F), and
    subdivision flags closed by their CANCEL TAG E007F. None for a name that is not a code.
    """
    try:
        points = [f"{int(part, 16):04X}" for part in re.split(r"[-_\s]+", code.strip()) if part]
    except ValueError:
        return None
    points = [point for point in points if point != "FE0F"]
    is_tag_sequence = len(points) > 1 and all(p.startswith("E00") for p in points[1:])
    if points and points[0] == "1F3F4" and is_tag_sequence and points[-1] != "E007F":
        points.append("E007F")
    return "-".join(points) or None


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


def _package_root(path: Path) -> Path:
    """Accept both the extracted `package/` folder and the folder that contains it."""
    return path / "package" if (path / "package" / "package.json").is_file() else path


def _readme_image_license(root: Path, style: str) -> str | None:
    """The README's own sentence about this style's image license, kept verbatim for the record."""
    readme = root / "README.md"
    if style not in _README_STYLE_WORDS or not readme.is_file():
        return None
    for line in readme.read_text(encoding="utf-8", errors="replace").splitlines():
        lower = line.lower()
        if line.lstrip().startswith("*") and "images" in lower and _README_STYLE_WORDS[style] in lower:
            return line.lstrip("* ").strip()
    return None


def _catalog_entries(root: Path) -> list[dict]:
    """emoji.json's base emoji, in a stable order that does not depend on the file's order."""
    entries = json.loads((root / "emoji.json").read_text(encoding="utf-8"))
    entries.sort(key=lambda e: (e.get("sort_order", 0), e["unified"]))
    return entries


def _datasource_images(
    image_dir: Path, style: str, entries: list[dict], size: int, skipped: Counter[str]
) -> Iterator[tuple[dict, np.ndarray]]:
    """(entry, pixels) for each catalog entry with a readable PNG of this style."""
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
        yield entry, pixels


def _svg_images(
    svg_dir: Path, style: str, entries: list[dict], size: int, skipped: Counter[str], info: dict
) -> Iterator[tuple[dict, np.ndarray]]:
    """(entry, pixels) for each catalog entry with a readable `<code>.svg`; file counts into info."""
    files: dict[str, Path] = {}
    for path in sorted(svg_dir.glob("*.svg")):  # sorted: if two names share a code, the first wins
        key = code_key(path.stem)
        if key is not None:
            files.setdefault(key, path)
    catalog_keys = {code_key(entry["unified"]) for entry in entries}
    unmatched = [key for key in files if key not in catalog_keys]
    skin_tone = sum(1 for key in unmatched if SKIN_TONES.intersection(key.split("-")))
    # Skin-tone variants are skipped as in the datasource styles; the rest (vendor extras in the
    # Private Use Area, codes newer than the catalog) have no name or category and are dropped.
    info.update(
        svg_files=len(files),
        matched=len(files) - len(unmatched),
        skin_tone_variants=skin_tone,
        not_in_catalog=len(unmatched) - skin_tone,
    )
    for entry in tqdm(entries, desc=f"rendering {style}", unit="img"):
        path = files.get(code_key(entry["unified"]))
        if path is None:
            skipped["no_image_in_style"] += 1
            continue
        try:
            pixels = render_svg_on_white(path.read_text(encoding="utf-8"), size)
        except (OSError, ValueError):  # resvg raises ValueError for an SVG it cannot parse or draw
            skipped["unreadable"] += 1
            continue
        yield entry, pixels


def build_dataset(
    package_dirs: dict[str, Path], size: int = IMAGE_SIZE, catalog: Path | None = None
) -> dict[str, np.ndarray]:
    """Parse extracted packages ({style: folder}) into the arrays of the .npz.

    Datasource styles read their own emoji.json. SVG styles (`SVG_STYLES`) take codes, names and
    categories from `catalog`, an emoji-datasource folder; by default the first datasource style's.
    """
    records: dict[str, list[str]] = {k: [] for k in ("style", "code", "category", "subcategory", "name")}
    records["caption"], records["split"] = [], []
    images: list[np.ndarray] = []
    skipped: Counter[str] = Counter()
    packages: dict[str, dict[str, object]] = {}
    svg_styles = sorted(set(package_dirs) & set(SVG_STYLES))
    if svg_styles and catalog is None:
        datasource = sorted(set(package_dirs) - set(SVG_STYLES))
        if not datasource:
            raise ValueError(f"Styles {svg_styles} need a catalog: an extracted {CATALOG_PACKAGE} package")
        catalog = package_dirs[datasource[0]]

    for style in sorted(package_dirs):
        root = _package_root(Path(package_dirs[style]))
        package_json = json.loads((root / "package.json").read_text(encoding="utf-8"))
        info: dict[str, object] = {
            "name": package_json.get("name"),
            "version": package_json.get("version"),
            "license": package_json.get("license"),
            "image_license": IMAGE_LICENSES.get(style, "unknown"),
            "image_license_readme": _readme_image_license(root, style),
        }
        packages[style] = info
        if style in SVG_STYLES:
            catalog_root = _package_root(Path(catalog))
            catalog_json = json.loads((catalog_root / "package.json").read_text(encoding="utf-8"))
            info["codes_from"] = f"{catalog_json.get('name')}@{catalog_json.get('version')}"
            info["attribution"] = SVG_STYLES[style].attribution
            entries = _catalog_entries(catalog_root)
            found = _svg_images(root / SVG_STYLES[style].image_dir, style, entries, size, skipped, info)
        else:
            entries = _catalog_entries(root)
            found = _datasource_images(root / "img" / style / str(size), style, entries, size, skipped)
        for entry, pixels in found:
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
    source = "npm packages of https://github.com/iamcal/emoji-data, base emoji only"
    if svg_styles:  # worded apart only then, so a datasource-only build stays byte-identical
        source = "npm packages (see packages), named by iamcal/emoji-data's catalog, base emoji only"
    meta = {
        "source": source,
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
    with atomic_path(out) as tmp:  # no half-written data set
        np.savez_compressed(tmp, **arrays)


def wanted_files(style: str | None, size: int = IMAGE_SIZE) -> tuple[str, ...]:
    """The tarball paths (prefixes) a style reads; style None: the catalog package's emoji.json."""
    common = ("package/package.json", "package/README.md")
    if style is None:
        return ("package/emoji.json", *common)
    if style in SVG_STYLES:
        return (*common, f"package/{SVG_STYLES[style].image_dir}/")
    return ("package/emoji.json", *common, f"package/img/{style}/{size}/")


def print_summary(arrays: dict[str, np.ndarray]) -> None:
    meta = json.loads(str(arrays["meta"]))
    print(f"images: {len(arrays['images'])}  codes: {meta['counts']['codes']}")
    for style in sorted(set(arrays["style"].tolist())):
        splits = arrays["split"][arrays["style"] == style]
        train, heldout = int(np.sum(splits == "train")), int(np.sum(splits == "heldout"))
        print(f"  {style:8s} {len(splits)}  (train {train}, heldout {heldout})")
    for style, info in meta["packages"].items():
        if "svg_files" in info:
            print(
                f"  {style} SVGs: {info['svg_files']}, matched to a catalog code {info['matched']}, "
                f"skin-tone variants {info['skin_tone_variants']}, not in catalog {info['not_in_catalog']}"
            )
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
        "--version",
        default=PACKAGE_VERSION,
        help=f"emoji-datasource(-*) version, the catalog's too (default {PACKAGE_VERSION})",
    )
    parser.add_argument(
        "--styles",
        nargs="+",
        default=list(TRAINING_STYLES),
        choices=STYLES,
        help=f"which image sets to include (default: {' '.join(TRAINING_STYLES)}; 'fluent' is the unseen "
        "style; 'google twitter' is the first data set)",
    )
    args = parser.parse_args(argv)

    start = time.perf_counter()

    def fetch(name: str, version: str, style: str | None) -> Path:
        tarball = npm_pack(name, version, args.cache_dir)
        dest = args.cache_dir / tarball_stem(name, version)
        return extract_package(tarball, dest, wanted_files(style))

    package_dirs: dict[str, Path] = {}
    for style in args.styles:
        version = SVG_STYLES[style].version if style in SVG_STYLES else args.version
        package_dirs[style] = fetch(package_name(style), version, style)
    catalog = None  # SVG styles use a datasource style's emoji.json, or fetch the catalog alone
    if set(package_dirs) <= set(SVG_STYLES):
        catalog = fetch(CATALOG_PACKAGE, args.version, None)
    arrays = build_dataset(package_dirs, catalog=catalog)
    write_npz(arrays, args.out)
    print_summary(arrays)
    size_mb = args.out.stat().st_size / 2**20
    print(f"wrote {args.out} ({size_mb:.1f} MiB) in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    sys.exit(main())
