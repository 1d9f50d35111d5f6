"""The data step: emoji packages -> .npz -> EmojiDataset, and a person's own image folder. No network."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

# `pytest` puts tests/ on sys.path, not the repo root; train/ is a folder of scripts, not installed.
ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from train import npm_tarballs, prepare_emoji  # noqa: E402
from train.data import (  # noqa: E402
    EmojiData,
    EmojiDataset,
    ImageFolderDataset,
    build_dataset,
    split_for_key,
)

# (code, name, short_names, category, subcategory). sha1("1F600") % 100 < 10: the one held-out code.
EMOJI = [
    ("1F600", "GRINNING FACE", ["grinning"], "Smileys & Emotion", "face-smiling"),
    ("1F603", "SMILING FACE WITH OPEN MOUTH", ["smiley"], "Smileys & Emotion", "face-smiling"),
    (
        "1F604",
        "SMILING FACE WITH OPEN MOUTH AND SMILING EYES",
        ["smile"],
        "Smileys & Emotion",
        "face-smiling",
    ),
    ("1F436", "DOG FACE", ["dog"], "Animals & Nature", "animal-mammal"),
    ("1F431", "CAT FACE", ["cat", "cat_face"], "Animals & Nature", "animal-mammal"),
    ("1F42D", "MOUSE FACE", ["mouse"], "Animals & Nature", "animal-mammal"),
]
NO_GOOGLE_IMAGE, CORRUPT_GOOGLE, MISSING_GOOGLE = "1F604", "1F431", "1F42D"


def color_of(code: str, style: str) -> tuple[int, int, int]:
    return (
        EMOJI.index(next(e for e in EMOJI if e[0] == code)) * 30 + 5,
        200 if style == "google" else 100,
        40,
    )


def make_package(root: Path, style: str) -> Path:
    package = root / f"emoji-datasource-{style}" / "package"
    image_dir = package / "img" / style / "64"
    image_dir.mkdir(parents=True)
    (package / "package.json").write_text(
        json.dumps({"name": f"emoji-datasource-{style}", "version": "0.0.1", "license": "MIT"})
    )
    entries = []
    for order, (code, name, short_names, category, subcategory) in enumerate(EMOJI):
        entry = {
            "name": name,
            "unified": code,
            "image": f"{code.lower()}.png",
            "short_names": short_names,
            "category": category,
            "subcategory": subcategory,
            "sort_order": order,
            "has_img_google": not (style == "google" and code == NO_GOOGLE_IMAGE),
            "has_img_twitter": True,
        }
        if code == "1F436":  # skin variations are ignored: base emoji only
            entry["skin_variations"] = {"1F3FB": {"unified": "1F436-1F3FB", "image": "1f436-1f3fb.png"}}
            Image.new("RGBA", (64, 64), (0, 0, 0, 255)).save(image_dir / "1f436-1f3fb.png")
        entries.append(entry)
        path = image_dir / entry["image"]
        if style == "google" and code == MISSING_GOOGLE:
            continue
        if style == "google" and code == CORRUPT_GOOGLE:
            path.write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
            continue
        image = Image.new("RGBA", (64, 64), (*color_of(code, style), 255))
        if code == "1F600":
            image.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red -> white
            image.putpixel((1, 0), (0, 0, 0, 128))  # half-transparent black -> mid grey
        image.save(path)
    (package / "emoji.json").write_text(json.dumps(entries))
    return package


@pytest.fixture
def package_dirs(tmp_path: Path) -> dict[str, Path]:
    return {style: make_package(tmp_path / "npm", style) for style in ("google", "twitter")}


def test_build_dataset_arrays(package_dirs: dict[str, Path]) -> None:
    arrays = prepare_emoji.build_dataset(package_dirs)
    images = arrays["images"]
    # google: 6 - no image - missing - corrupt = 3; twitter: all 6.
    assert images.shape == (9, 64, 64, 3) and images.dtype == np.uint8
    assert arrays["style"].tolist() == ["google"] * 3 + ["twitter"] * 6
    assert arrays["code"].tolist()[:3] == ["1F600", "1F603", "1F436"]
    for key in ("style", "code", "category", "subcategory", "name", "caption", "split"):
        assert arrays[key].shape == (9,) and arrays[key].dtype.kind == "U", key
    assert arrays["category_names"].tolist() == ["Animals & Nature", "Smileys & Emotion"]
    assert arrays["subcategory_names"].tolist() == ["animal-mammal", "face-smiling"]
    assert arrays["name"][0] == "grinning face"
    assert arrays["caption"][0] == "grinning face, grinning"
    twitter_cat = arrays["caption"][(arrays["style"] == "twitter") & (arrays["code"] == "1F431")][0]
    assert twitter_cat == "cat face, cat"  # "cat_face" adds nothing to the name
    assert all(len(c) > 0 for c in arrays["caption"].tolist())

    first = images[0]  # google 1F600
    assert first[0, 0].tolist() == [255, 255, 255]  # transparent red composited to white
    assert np.all(np.abs(first[0, 1].astype(int) - 127) <= 1)  # 50 % black over white
    assert first[5, 5].tolist() == list(color_of("1F600", "google"))

    meta = json.loads(str(arrays["meta"]))
    assert meta["skipped"] == {"missing": 1, "unreadable": 1, "no_image_in_style": 1}
    assert meta["packages"]["twitter"]["license"] == "MIT"
    assert meta["packages"]["google"]["image_license"].startswith("Apache-2.0")
    assert meta["counts"]["per_style"] == {"google": 3, "twitter": 6}


def test_split_is_by_code_and_deterministic(package_dirs: dict[str, Path]) -> None:
    first = prepare_emoji.build_dataset(package_dirs)
    second = prepare_emoji.build_dataset(package_dirs)
    for key in ("code", "split", "style"):
        np.testing.assert_array_equal(first[key], second[key])
    np.testing.assert_array_equal(first["images"], second["images"])
    splits_of_code: dict[str, set[str]] = {}
    for code, split in zip(first["code"].tolist(), first["split"].tolist()):
        splits_of_code.setdefault(code, set()).add(split)
    assert all(len(s) == 1 for s in splits_of_code.values())
    heldout = sorted(code for code, s in splits_of_code.items() if s == {"heldout"})
    assert heldout == ["1F600"]
    assert first["split"].tolist().count("heldout") == 2  # 1F600 in google and in twitter
    assert prepare_emoji.split_for_code("1F600") == split_for_key("1F600") == "heldout"


def test_safe_member_filter() -> None:
    import tarfile

    def member(name: str, kind: bytes = tarfile.REGTYPE) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        return info

    wanted = ("package/emoji.json", "package/img/google/64/")
    assert npm_tarballs.is_safe_member(member("package/img/google/64/1f600.png"), wanted)
    assert not npm_tarballs.is_safe_member(member("package/img/google/64/../../../x.png"), wanted)
    assert not npm_tarballs.is_safe_member(member("/package/emoji.json"), wanted)
    assert not npm_tarballs.is_safe_member(member("package/img/google/64/l.png", tarfile.SYMTYPE), wanted)
    assert not npm_tarballs.is_safe_member(member("package/img/google/sheets/s.png"), wanted)


def test_emoji_dataset_from_npz(package_dirs: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "emoji.npz"
    prepare_emoji.write_npz(prepare_emoji.build_dataset(package_dirs), path)
    data = EmojiData.load(path)
    assert len(data) == 9 and data.meta["counts"]["images"] == 9

    train = EmojiDataset(path, split="train")
    heldout = EmojiDataset(path, split="heldout")
    assert (len(train), len(heldout)) == (7, 2)
    assert len(EmojiDataset(path, split="all")) == 9
    assert train.class_names == ["Animals & Nature", "Smileys & Emotion"]
    assert sorted(set(heldout.codes)) == ["1F600"] and "1F600" not in train.codes

    item = heldout[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1.0 and item["image"].max() <= 1.0
    assert item["image"][:, 0, 0].tolist() == [1.0, 1.0, 1.0]  # white stays exactly 1
    assert item["label"] == 1 and item["caption"] == "grinning face, grinning"
    assert item["code"] == "1F600" and item["name"] == "grinning face" and item["index"] == 0
    labels = [train[i]["label"] for i in range(len(train))]
    assert all(0 <= label < len(train.class_names) for label in labels)

    sub = EmojiDataset(path, split="all", label="subcategory", image_size=32, styles=["twitter"])
    assert len(sub) == 6 and sub.class_names == ["animal-mammal", "face-smiling"]
    assert sub.class_groups == {"Animals & Nature": ["animal-mammal"], "Smileys & Emotion": ["face-smiling"]}
    assert train.class_groups is None  # category labels have no coarser level
    assert sub[0]["image"].shape == (3, 32, 32)
    with pytest.raises(ValueError, match="Unknown styles"):
        EmojiDataset(path, styles=["apple"])
    assert isinstance(build_dataset(path, "heldout", "category", 64), EmojiDataset)


@pytest.fixture
def image_folder(tmp_path: Path) -> Path:
    root = tmp_path / "mine"
    (root / "cats").mkdir(parents=True)
    (root / "dogs").mkdir()
    Image.new("RGB", (80, 40), (255, 0, 0)).save(root / "cats" / "a.png")  # wide: center-cropped
    Image.new("RGBA", (16, 16), (0, 0, 255, 0)).save(root / "cats" / "b.png")
    (root / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    Image.new("RGB", (32, 32), (0, 255, 0)).save(root / "dogs" / "c.jpg")
    Image.new("RGB", (32, 32), (0, 0, 0)).save(root / "dogs" / "d.webp")
    (root / "dogs" / "notes.txt").write_text("not an image")
    return root


def test_image_folder_items_and_lazy_skip(image_folder: Path) -> None:
    dataset = ImageFolderDataset(image_folder, image_size=24)
    assert dataset.class_names == ["cats", "dogs"]
    assert len(dataset) == 5 and dataset.labels == [0, 0, 1, 1, 1]
    item = dataset[0]
    assert item["image"].shape == (3, 24, 24) and item["label"] == 0 and item["caption"] == "cats"
    assert item["image"][:, 12, 12].tolist() == [1.0, -1.0, -1.0]  # red
    assert dataset[1]["image"].min() == 1.0  # transparent -> white
    assert dataset.skipped == 0
    replaced = dataset[2]  # dogs/broken.png -> the next readable file, dogs/c.jpg
    assert replaced["index"] == 3 and replaced["code"] == "dogs/c.jpg" and dataset.skipped == 1
    dataset[2]
    assert dataset.skipped == 1  # a bad file is counted once

    fresh = ImageFolderDataset(image_folder)
    assert fresh.verify() == 1
    assert len(fresh) == 4 and fresh.skipped == 1
    assert [f.name for f in fresh.files] == ["a.png", "b.png", "c.jpg", "d.webp"]
    assert isinstance(build_dataset(image_folder, "all", "category", 64), ImageFolderDataset)


def test_image_folder_captions(image_folder: Path, tmp_path: Path) -> None:
    lines = [{"file": "cats/a.png", "caption": "a wide red cat"}, {"file": "dogs/d.webp", "caption": "night"}]
    (image_folder / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines))
    dataset = ImageFolderDataset(image_folder)  # found in root by name
    assert dataset.captions == ["a wide red cat", "cats", "dogs", "dogs", "night"]
    assert dataset[0]["caption"] == "a wide red cat"

    csv_path = tmp_path / "caps.csv"
    csv_path.write_text('file,caption\ncats/b.png,"a blank, white square"\n')
    assert ImageFolderDataset(image_folder, captions=csv_path).captions[1] == "a blank, white square"


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="Data directory not found"):
        ImageFolderDataset(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    (empty / "cats").mkdir(parents=True)
    (empty / "cats" / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match=r"No images found under .*expected root/<class>/<image>\.png"):
        ImageFolderDataset(empty)
    with pytest.raises(FileNotFoundError, match=r"(?i)data not found"):
        build_dataset(tmp_path / "missing.npz", "train", "category", 64)
