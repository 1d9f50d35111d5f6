"""The Latent manifold tab and the manifold library: the file, the 2-D maps across λ, clicks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

gr = pytest.importorskip("gradio")
client_mod = pytest.importorskip("gradio_client")
from gradio_client import Client, handle_file  # noqa: E402

from app import ModelRegistry, build_demo  # noqa: E402
from reptok.manifold import fit_2d, load_manifold, nearest, place, save_manifold  # noqa: E402
from reptok.pipeline import RepTok  # noqa: E402
from tests.app_fixtures import LAMBDAS, SIZE, error, item_path  # noqa: E402
from tests.helpers import CLASS_NAMES, randomize_  # noqa: E402

# ------------------------------------------------------------------------------- endpoints


def test_manifold(client: Client, files: dict[str, Path]) -> None:
    plot, note = client.predict(None, api_name="/manifold")
    figure = json.loads(plot["plot"])  # gr.Plot's payload: the Plotly figure as JSON
    assert [a["text"] for a in figure["layout"]["annotations"]] == [f"λ = {lam}" for lam in LAMBDAS]
    assert "12 held-out tokens" in note and "Click a point" in note
    plot, note = client.predict(handle_file(files["rgb.png"]), api_name="/manifold")
    stars = [t for t in json.loads(plot["plot"])["data"] if t["name"] == "your image"]
    assert len(stars) == len(LAMBDAS)
    assert "- **λ = 1** (`tiny`): emoji" in note  # neighbours per λ, each λ with its own model ...
    assert (
        "- **λ = 0** (`tiny`; no loaded model has λ = 0, so `tiny` encoded it): emoji" in note
    )  # ... or not


def test_manifold_emoji_by_name(client: Client) -> None:
    gallery, text = client.predict("emoji 4", api_name="/manifold_emoji")
    # No original images in this test (no data set): the point's token decoded at each λ with a model.
    assert [item["caption"] for item in gallery] == ["λ = 1"]
    assert Image.open(item_path(gallery[0])).size == (SIZE, SIZE)
    assert "**emoji 4**" in text and "no original images" in text and "no model for λ = 0, inf" in text
    # A name not on the map: Gradio's dropdown refuses it (the handler would say "No emoji called ...").
    assert "not in the list of choices" in error(client, "no such emoji", api_name="/manifold_emoji")


def test_manifold_missing(model_dir: Path, tmp_path: Path) -> None:
    from app_parts.handlers import Explorer
    from app_parts.tab_manifold import ManifoldView

    plot, note = ManifoldView(Explorer(ModelRegistry([model_dir]), tmp_path / "nope.npz")).plot(None)
    assert plot is None and "No precomputed manifold" in note


# ------------------------------------------------------------------------------- manifold library


def test_manifold_roundtrip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(10, 8)).astype(np.float32)
    xy = fit_2d(tokens)  # N < 15: PCA
    assert xy.shape == (10, 2) and np.isfinite(xy).all()
    assert nearest(tokens[3], tokens, 3)[0] == 3
    assert np.allclose(place(tokens[3], tokens, xy, k=1), xy[3])
    path = save_manifold(
        tmp_path / "m.npz", names=list("abcdefghij"), categories=["x"] * 10,
        settings={"0": {"xy": xy, "tokens": tokens}, "inf": {"xy": xy, "tokens": tokens}},
        model_tokens={"emoji · dino/λ=1": tokens[:, :4]},
    )  # fmt: skip
    m = load_manifold(path)
    assert list(m.settings) == ["0", "inf"] and m.names[2] == "c"
    assert m.settings["inf"]["tokens"].dtype == np.float16
    assert list(m.model_tokens) == ["emoji · dino/λ=1"]
    assert np.allclose(m.model_tokens["emoji · dino/λ=1"], tokens[:, :4], atol=1e-2)
    assert m.setting_models == {}
    with pytest.raises(ValueError, match="label"):
        save_manifold(tmp_path / "bad.npz", names=["a"], categories=["x"], settings={"../x": {}})
    # Which model's tokens a setting holds: kept per λ; a λ with none stays out.
    settings = {"0": {"xy": xy, "tokens": tokens}, "inf": {"xy": xy, "tokens": tokens}}
    path = save_manifold(
        tmp_path / "m2.npz", names=list("abcdefghij"), categories=["x"] * 10, settings=settings,
        setting_models={"0": "emoji-lam0"},
    )  # fmt: skip
    assert load_manifold(path).setting_models == {"0": "emoji-lam0"}
    with pytest.raises(ValueError, match="not in the file"):
        save_manifold(
            tmp_path / "bad.npz", names=list("abcdefghij"), categories=["x"] * 10, settings=settings,
            setting_models={"1": "emoji"},
        )  # fmt: skip


@pytest.mark.slow
def test_fit_2d_umap() -> None:
    tokens = np.random.default_rng(0).normal(size=(30, 8)).astype(np.float32)
    assert fit_2d(tokens, seed=0).shape == (30, 2)


# ------------------------------------------------------------------------------- manifold across λ


def _manifold(
    path: Path,
    lams: list[str],
    dim: int,
    n: int = 12,
    owners: dict[str, str] | None = None,
    names: list[str] | None = None,
) -> Path:
    rng = np.random.default_rng(len(lams))
    tokens = rng.normal(size=(n, dim)).astype(np.float32)
    settings = {
        lam: {"xy": rng.normal(size=(n, 2)).astype(np.float32), "tokens": tokens + 0.1 * i}
        for i, lam in enumerate(lams)
    }
    names = names or [f"emoji {i}" for i in range(n)]
    cats = [CLASS_NAMES[i % 3] for i in range(n)]
    return save_manifold(path, names=names, categories=cats, settings=settings, setting_models=owners)


def _view(model_dir: Path, manifold: Path, images: Path | None = None) -> object:
    from app_parts.handlers import Explorer
    from app_parts.tab_manifold import HeldOutImages, ManifoldView

    return ManifoldView(Explorer(ModelRegistry([model_dir]), manifold), HeldOutImages(images))


@pytest.mark.parametrize(
    ("lams", "rows"), [(["1"], 1), (["0", "1", "inf"], 1), (["0", "0.01", "0.1", "1", "10", "inf"], 2)]
)
def test_small_multiples(
    model_dir: Path, files: dict[str, Path], tmp_path: Path, lams: list[str], rows: int
) -> None:
    dim = RepTok.from_pretrained(model_dir).token_dim
    view = _view(model_dir, _manifold(tmp_path / "m.npz", lams, dim))
    fig, note = view.plot(str(files["rgb.png"]))  # type: ignore[attr-defined]
    # One panel per setting, in the file's order, at most 4 to a row.
    assert [a.text for a in fig.layout.annotations] == [f"λ = {lam}" for lam in lams]
    axes = sorted({t.xaxis for t in fig.data})
    assert len(axes) == len(lams) and fig.layout.height == 340 * rows + 90  # 4 panels to a row
    # A category has one colour, the same in every panel, and one legend entry that toggles them all.
    points = [t for t in fig.data if t.name != "your image"]
    colours: dict[str, set[str]] = {}
    for t in points:
        colours.setdefault(t.name, set()).add(t.marker.color)
        assert t.legendgroup == t.name
    assert sorted(colours) == sorted(CLASS_NAMES) and all(len(c) == 1 for c in colours.values())
    assert len({c.pop() for c in colours.values()}) == len(CLASS_NAMES)  # different categories differ
    assert sorted(t.name for t in points if t.showlegend) == sorted(CLASS_NAMES)
    assert len(points) == len(CLASS_NAMES) * len(lams)
    # Hovering names the emoji (and its category); a click reads the point's index (customdata).
    for t in points:
        assert list(t.text) == [f"emoji {i}" for i in t.customdata]
        assert "%{text}" in t.hovertemplate and t.name in t.hovertemplate
    # The upload lands in every panel (one legend entry), with its neighbours listed per λ.
    stars = [t for t in fig.data if t.name == "your image"]
    assert sorted(t.xaxis for t in stars) == axes and sum(bool(t.showlegend) for t in stars) == 1
    assert [line.split("**")[1] for line in note.splitlines() if line.startswith("- **λ")] == [
        f"λ = {lam}" for lam in lams
    ]


def test_category_colours_fixed_and_spare() -> None:
    from app_parts.tab_manifold import CATEGORY_COLOURS, category_colours

    colours = category_colours(["Flags", "Food & Drink", "zz made up", "Flags", "aa made up"])
    assert colours["Flags"] == CATEGORY_COLOURS["Flags"]  # the same in every manifold file
    assert colours["Food & Drink"] == CATEGORY_COLOURS["Food & Drink"]
    assert len(set(colours.values())) == 4  # unknown categories get spare colours of their own


def test_manifold_emoji_originals_and_click(model_dir: Path, tmp_path: Path) -> None:
    dim = RepTok.from_pretrained(model_dir).token_dim
    images = tmp_path / "emoji.npz"
    np.savez(
        images,
        images=np.stack([np.full((8, 8, 3), v, np.uint8) for v in (10, 20, 30)]),
        name=np.array(["emoji 3", "emoji 3", "emoji 3"]),
        style=np.array(["google", "twitter", "openmoji"]),
        split=np.array(["heldout", "heldout", "train"]),  # only held-out images are shown
    )
    view = _view(model_dir, _manifold(tmp_path / "m.npz", ["0", "1"], dim), images)
    gallery, text = view.show_name("emoji 3")  # type: ignore[attr-defined]
    assert [caption for _, caption in gallery] == ["original (google)", "original (twitter)", "λ = 1"]
    assert Image.open(gallery[0][0]).getpixel((0, 0)) == (10, 10, 10)
    assert "originals from `emoji.npz`" in text and "no model for λ = 0" in text
    # A click: "<index> <time>" from the page's script; the dropdown follows the clicked emoji.
    gallery, text, dropdown = view.show_point("3 1700000000000")  # type: ignore[attr-defined]
    assert [caption for _, caption in gallery][-1] == "λ = 1" and dropdown["value"] == "emoji 3"
    assert view.show_point("junk") == (gr.skip(),) * 3  # type: ignore[attr-defined]


def test_manifold_decodes_a_point_with_the_model_whose_tokens_it_holds(
    model_dir: Path, files: dict[str, Path], tmp_path: Path
) -> None:
    """Two models share λ = 1 (the default and its same-budget twin, say): the map's λ = 1 tokens are
    the twin's, so the twin decodes a clicked point and places an upload, not the first model."""
    from app_parts.handlers import Explorer
    from app_parts.tab_manifold import HeldOutImages, ManifoldView

    twin = RepTok.from_pretrained(model_dir)
    randomize_(twin.decoder, seed=3)
    twin.config.info = {"name": "twin"}
    twin.save_pretrained(tmp_path / "twin", dtype=torch.float32)
    path = _manifold(tmp_path / "m.npz", ["1"], twin.token_dim, owners={"1": "twin"})
    registry = ModelRegistry([model_dir, tmp_path / "twin"])
    assert registry.by_lambda("1") == "tiny"  # the first model with that λ is not the tokens' model
    view = ManifoldView(Explorer(registry, path), HeldOutImages(None))
    gallery, _ = view.show_name("emoji 3")
    token = torch.from_numpy(load_manifold(path).settings["1"]["tokens"][3:4].astype(np.float32))[:, None]
    shown = np.asarray(Image.open(gallery[0][0]))
    assert np.array_equal(shown, np.asarray(twin.decode(token, seed=0)[0]))
    assert not np.array_equal(shown, np.asarray(RepTok.from_pretrained(model_dir).decode(token, seed=0)[0]))
    _, note = view.plot(str(files["rgb.png"]))
    assert "**λ = 1** (`twin`)" in note


def test_manifold_click_is_wired(model_dir: Path, manifold_path: Path) -> None:
    """gr.Plot reports no clicks: a page-load script hands Plotly's click to a hidden textbox."""
    config = build_demo(ModelRegistry([model_dir]), manifold_path=manifold_path).get_config_file()
    box = next(c for c in config["components"] if c.get("props", {}).get("elem_id") == "manifold-click")
    assert box["props"]["visible"] == "hidden"
    assert any("plotly_click" in (d.get("js") or "") for d in config["dependencies"])


@pytest.mark.parametrize("on_map", [True, False])
def test_manifold_tab_opens_on_an_example_and_its_emoji(
    model_dir: Path, tmp_path: Path, on_map: bool
) -> None:
    """The tab opens on the first opening example, placed in every panel at page load, and on that
    emoji's originals and decodings where the map holds its name (the gallery used to open empty)."""
    from app_parts.tabs import OPENING_EXAMPLES

    dim = RepTok.from_pretrained(model_dir).token_dim
    names = [f"emoji {i}" for i in range(12)]
    if on_map:
        names[5] = "grinning face"
    assert OPENING_EXAMPLES[0] == "google-grinning_face.png"
    demo = build_demo(
        ModelRegistry([model_dir]), manifold_path=_manifold(tmp_path / "m.npz", ["1"], dim, names=names)
    )
    blocks = {b._id: b for b in demo.blocks.values()}
    (image,) = [
        b for b in blocks.values() if getattr(b, "label", "") == "Place an image in every panel (optional)"
    ]
    (pick,) = [b for b in blocks.values() if getattr(b, "label", "") == "Show an emoji (or click a point)"]
    assert Path(image.value["path"]).name == OPENING_EXAMPLES[0]
    assert pick.value == ("grinning face" if on_map else None)
    on_load = {
        f.fn.__name__: f
        for f in demo.fns.values()
        if f.fn is not None and "load" in [e for _, e in f.targets]
    }
    assert {"plot", "show_name"} <= on_load.keys()
    assert on_load["show_name"].inputs == [pick]
