"""The SVG styles of prepare_emoji.py (OpenMoji, Fluent): code mapping, split, rendering. No network."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from train import npm_tarballs, prepare_emoji  # noqa: E402

ENGLAND = "1F3F4-E0067-E0062-E0065-E006E-E0067-E007F"
EYE_BUBBLE = "1F441-FE0F-200D-1F5E8-FE0F"
# (unified, name, category, subcategory). Held out by sha1: 1F600 and EYE_BUBBLE, whose FE0F-less
# fluent file name must still take the catalog's code (its own hash would say train).
CATALOG = [
    ("1F600", "GRINNING FACE", "Smileys & Emotion", "face-smiling"),
    ("2764-FE0F", "HEAVY BLACK HEART", "Smileys & Emotion", "heart"),
    (EYE_BUBBLE, "EYE IN SPEECH BUBBLE", "Smileys & Emotion", "emotion"),
    (ENGLAND, "England Flag", "Flags", "subdivision-flag"),
    ("0035-FE0F-20E3", "KEYCAP 5", "Symbols", "keycap"),
]
# Vendors' file names for the catalog codes: case, FE0F and separators differ from the catalog's.
OPENMOJI_FILES = {"1F600": "1F600", "2764-FE0F": "2764-FE0F", EYE_BUBBLE: EYE_BUBBLE, ENGLAND: ENGLAND}
FLUENT_FILES = {
    "1F600": "1f600",
    "2764-FE0F": "2764",
    EYE_BUBBLE: "1f441-200d-1f5e8",
    ENGLAND: "1f3f4-e0067_e0062_e0065_e006e_e0067",  # underscores, no CANCEL TAG
    "0035-FE0F-20E3": "0035-fe0f-20e3",
}
OPENMOJI_COLOR, FLUENT_COLOR = (32, 160, 64), (200, 60, 20)


def svg(color: tuple[int, int, int], view: tuple[int, int], margin: int) -> str:
    """A filled rectangle `margin` units inside the viewBox, transparent around it."""
    w, h = view
    fill = "#{:02x}{:02x}{:02x}".format(*color)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}">'
        f'<rect x="{margin}" y="{margin}" width="{w - 2 * margin}" height="{h - 2 * margin}" fill="{fill}"/>'
        "</svg>"
    )


def write_package(folder: Path, name: str, files: dict[str, str]) -> Path:
    package = folder / "package"
    for relative, text in files.items():
        (package / relative).parent.mkdir(parents=True, exist_ok=True)
        (package / relative).write_text(text, encoding="utf-8")
    (package / "package.json").write_text(json.dumps({"name": name, "version": "0.0.1", "license": "X"}))
    return package


@pytest.fixture
def package_dirs(tmp_path: Path) -> dict[str, Path]:
    """google (the catalog, every code as a PNG) and fake openmoji and fluent packages."""
    entries = [
        {"unified": code, "name": name, "short_names": [], "category": category, "subcategory": sub}
        | {"image": f"{code.lower()}.png", "sort_order": order, "has_img_google": True}
        for order, (code, name, category, sub) in enumerate(CATALOG)
    ]
    google = write_package(
        tmp_path / "google", "emoji-datasource-google", {"emoji.json": json.dumps(entries)}
    )
    (google / "img" / "google" / "64").mkdir(parents=True)
    for entry in entries:
        Image.new("RGBA", (64, 64), (0, 0, 255, 255)).save(google / "img" / "google" / "64" / entry["image"])

    openmoji = {f"color/svg/{stem}.svg": svg(OPENMOJI_COLOR, (72, 72), 8) for stem in OPENMOJI_FILES.values()}
    openmoji["color/svg/1F44D-1F3FB.svg"] = svg(OPENMOJI_COLOR, (72, 72), 8)  # skin tone: skipped
    openmoji["color/svg/E000.svg"] = svg(OPENMOJI_COLOR, (72, 72), 8)  # OpenMoji extra: not in catalog
    openmoji["color/svg/0035-FE0F-20E3.svg"] = "<svg this is not"  # unreadable
    fluent = {f"assets/{stem}.svg": svg(FLUENT_COLOR, (32, 32), 0) for stem in FLUENT_FILES.values()}
    fluent["assets/0035-fe0f-20e3.svg"] = svg(FLUENT_COLOR, (32, 40), 0)  # not square: padded
    fluent["assets/1f44d-1f3fb.svg"] = svg(FLUENT_COLOR, (32, 32), 0)
    return {
        "google": google,
        "openmoji": write_package(tmp_path / "openmoji", "openmoji", openmoji),
        "fluent": write_package(tmp_path / "fluent", "@lobehub/fluent-emoji-flat", fluent),
    }


def test_code_key() -> None:
    key = prepare_emoji.code_key
    assert key("2764-FE0F") == key("2764") == key("2764-fe0f") == "2764"
    assert key("1f441-200d-1f5e8") == key(EYE_BUBBLE) == "1F441-200D-1F5E8"
    assert key("1f3f4-e0067_e0062_e0065_e006e_e0067") == key(ENGLAND) == ENGLAND
    assert key("1F3F4") == "1F3F4" and key("2a-fe0f-20e3") == "002A-20E3"
    assert key("abacus") is None and key("FE0F") is None


def test_svg_styles_map_to_catalog_codes(package_dirs: dict[str, Path]) -> None:
    arrays = prepare_emoji.build_dataset(package_dirs)
    styles, codes = arrays["style"].tolist(), arrays["code"].tolist()
    by_style = {s: [c for s2, c in zip(styles, codes) if s2 == s] for s in ("fluent", "google", "openmoji")}
    assert styles == sorted(styles)  # styles in name order, each in catalog order
    assert by_style["google"] == [code for code, *_ in CATALOG]
    assert by_style["fluent"] == [code for code, *_ in CATALOG]  # every file name found its code
    assert by_style["openmoji"] == [code for code, *_ in CATALOG[:4]]  # the keycap SVG is broken

    meta = json.loads(str(arrays["meta"]))
    counts = {k: meta["packages"]["openmoji"][k] for k in ("svg_files", "matched", "skin_tone_variants")}
    assert counts == {"svg_files": 7, "matched": 5, "skin_tone_variants": 1}
    assert meta["packages"]["openmoji"]["not_in_catalog"] == 1
    assert (
        meta["packages"]["fluent"]["matched"] == 5 and meta["packages"]["fluent"]["skin_tone_variants"] == 1
    )
    assert meta["packages"]["openmoji"]["image_license"].startswith("CC-BY-SA-4.0")
    assert "OpenMoji" in meta["packages"]["openmoji"]["attribution"]
    assert meta["packages"]["fluent"]["codes_from"] == "emoji-datasource-google@0.0.1"
    assert meta["skipped"] == {"missing": 0, "unreadable": 1, "no_image_in_style": 0}
    assert meta["counts"]["per_style"] == {"fluent": 5, "google": 5, "openmoji": 4}

    # Same code, same split and same name in every style.
    for code in set(codes):
        rows = [i for i, c in enumerate(codes) if c == code]
        assert {arrays["split"][i] for i in rows} == {prepare_emoji.split_for_code(code)}
        assert len({arrays["caption"][i] for i in rows}) == 1
    assert sorted({c for c, s in zip(codes, arrays["split"].tolist()) if s == "heldout"}) == [
        EYE_BUBBLE,
        "1F600",
    ]
    assert prepare_emoji.split_for_code("1F441-200D-1F5E8") == "train"
    assert arrays["name"][codes.index(ENGLAND)] == "england flag"


def test_svg_images_on_white(package_dirs: dict[str, Path]) -> None:
    arrays = prepare_emoji.build_dataset(package_dirs)
    images, styles, codes = arrays["images"], arrays["style"], arrays["code"]
    assert images.shape == (14, 64, 64, 3) and images.dtype == np.uint8
    openmoji = images[styles == "openmoji"].astype(int)
    assert np.all(openmoji[:, :4, :4] == 255)  # 8 of 72 units of margin: white corners, no crop
    assert np.all(np.abs(openmoji[:, 32, 32] - OPENMOJI_COLOR) <= 1)
    fluent = images[(styles == "fluent") & (codes != "0035-FE0F-20E3")].astype(int)
    assert np.all(np.abs(fluent[:, 1:63, 1:63] - FLUENT_COLOR) <= 1)  # fills its square viewBox
    keycap = images[(styles == "fluent") & (codes == "0035-FE0F-20E3")][0].astype(int)
    # 32 × 40 fitted into the square: full height, 51 of 64 columns, white bands left and right.
    assert np.all(keycap[:, :5] >= 250) and np.all(keycap[:, -5:] >= 250)
    assert np.all(np.abs(keycap[1:63, 32] - FLUENT_COLOR) <= 1)


def test_svg_styles_need_a_catalog(package_dirs: dict[str, Path]) -> None:
    svg_only = {style: package_dirs[style] for style in ("openmoji", "fluent")}
    with pytest.raises(ValueError, match="need a catalog"):
        prepare_emoji.build_dataset(svg_only)
    arrays = prepare_emoji.build_dataset(svg_only, catalog=package_dirs["google"].parent)
    assert sorted(set(arrays["style"].tolist())) == ["fluent", "openmoji"] and len(arrays["code"]) == 9


def test_npm_names_and_wanted_files() -> None:
    assert prepare_emoji.package_name("fluent") == "@lobehub/fluent-emoji-flat"
    assert prepare_emoji.package_name("google") == "emoji-datasource-google"
    assert (
        npm_tarballs.tarball_stem("@lobehub/fluent-emoji-flat", "1.1.0") == "lobehub-fluent-emoji-flat-1.1.0"
    )
    assert "package/color/svg/" in prepare_emoji.wanted_files("openmoji")
    assert prepare_emoji.package_name("emojione") == "emojione"  # 2.2.7: the last CC BY 4.0 artwork
    assert "package/assets/svg/" in prepare_emoji.wanted_files("emojione")
    assert prepare_emoji.code_key("0023-20e3") == prepare_emoji.code_key("0023-FE0F-20E3")  # its file names
    assert "package/img/twitter/64/" in prepare_emoji.wanted_files("twitter")
    assert prepare_emoji.wanted_files(None)[0] == "package/emoji.json"
    assert set(prepare_emoji.STYLES) == set(prepare_emoji.IMAGE_LICENSES)
