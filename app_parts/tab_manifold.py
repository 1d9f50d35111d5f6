"""The "Latent manifold" tab: the held-out tokens' 2-D maps for every λ side by side, and the emoji
behind a point.

One Plotly figure of small multiples (a panel per λ, in the manifold file's order), each category
the same colour in every panel. An uploaded image is encoded by the model of each λ and placed in
each panel, with its nearest neighbours per λ. The tab opens on an example image, and on its emoji
where the map holds it.

Clicking a point: gr.Plot (Gradio 6.31) has only a `change` event, it reports no clicks. So a few
lines of JavaScript (CLICK_JS, run on page load) listen to Plotly's own `plotly_click` on the
figure and write the point's index into a hidden textbox, whose change shows the emoji. The
"Show an emoji" dropdown does the same by name, for keyboards and for when the script is not there.

What "the emoji" shows: the manifold file holds tokens, names and categories, no pictures. The
original held-out images come from a prepared emoji data set when one is at hand
($REPTOK_MANIFOLD_IMAGES, else data/emoji64.npz: git-ignored, so absent on a Space); always shown
is the point's stored token decoded by the model of each λ.
"""

from __future__ import annotations

import math
import os
import threading
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gradio as gr
import numpy as np
import torch
from PIL import Image

from app_parts import outputs
from app_parts.handlers import Explorer, friendly_errors, open_upload
from app_parts.tabs import gallery, image_input, opening_images
from reptok.manifold import Manifold, nearest, place

if TYPE_CHECKING:
    import plotly.graph_objects as go

ROOT = Path(__file__).resolve().parents[1]
IMAGES_ENV = "REPTOK_MANIFOLD_IMAGES"  # a prepared emoji .npz (train/prepare_emoji.py) with the originals
DEFAULT_IMAGES = ROOT / "data" / "emoji64.npz"
MAX_COLUMNS = 4  # panels per row
PANEL_HEIGHT = 340
# Fixed, so a category keeps its colour in every panel and every manifold file (Plotly's "Vivid").
CATEGORY_COLOURS = {
    "Smileys & Emotion": "rgb(218, 165, 27)",
    "People & Body": "rgb(229, 134, 6)",
    "Animals & Nature": "rgb(153, 201, 69)",
    "Food & Drink": "rgb(237, 100, 90)",
    "Travel & Places": "rgb(47, 138, 196)",
    "Activities": "rgb(204, 97, 176)",
    "Objects": "rgb(93, 105, 177)",
    "Symbols": "rgb(36, 121, 108)",
    "Flags": "rgb(118, 78, 159)",
    "Component": "rgb(165, 170, 153)",
}
OTHER_COLOURS = ["rgb(82, 188, 163)", "rgb(136, 34, 85)", "rgb(221, 204, 119)", "rgb(102, 17, 0)"]
CLICK_JS = """
() => {
  // gr.Plot reports no clicks: listen to Plotly's own event, hand the point to a hidden textbox.
  const hook = () => {
    for (const plot of document.querySelectorAll("#manifold-plot .js-plotly-plot")) {
      if (plot.dataset.reptokClick || typeof plot.on !== "function") continue;
      plot.dataset.reptokClick = "1";
      plot.on("plotly_click", (event) => {
        const point = event && event.points && event.points[0];
        const box = document.querySelector("#manifold-click textarea, #manifold-click input");
        if (!point || point.customdata === undefined || !box) return;
        box.value = `${point.customdata} ${Date.now()}`;  // a new value even for the same point
        box.dispatchEvent(new Event("input", { bubbles: true }));
      });
    }
  };
  setInterval(hook, 500);  // the figure is redrawn (and may be replaced) on every upload
}
"""


def category_colours(categories: list[str]) -> dict[str, str]:
    """A colour per category: the fixed one where there is one, else the next spare, in sorted order."""
    spare = iter(OTHER_COLOURS * (1 + len(categories) // len(OTHER_COLOURS)))
    return {c: CATEGORY_COLOURS.get(c) or next(spare) for c in sorted(set(categories))}


def small_multiples(m: Manifold, spots: dict[str, np.ndarray] | None = None) -> go.Figure:
    """One panel per λ of `m` (its order), points coloured by category (one legend entry each);
    `spots`: λ -> (2,) where the uploaded image lands in that panel."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    spots = spots or {}
    lams = list(m.settings)
    columns = min(len(lams), MAX_COLUMNS)
    rows = math.ceil(len(lams) / columns)
    fig = make_subplots(
        rows=rows,
        cols=columns,
        subplot_titles=[f"λ = {lam}" for lam in lams],
        horizontal_spacing=0.02,
        vertical_spacing=0.1 / rows,
    )
    names, cats = np.array(m.names), np.array(m.categories)
    colours = category_colours(m.categories)
    for panel, lam in enumerate(lams):
        row, col = divmod(panel, columns)
        xy = m.settings[lam]["xy"]  # (N, 2)
        for cat, colour in colours.items():
            idx = np.flatnonzero(cats == cat)
            trace = go.Scatter(
                x=xy[idx, 0],
                y=xy[idx, 1],
                mode="markers",
                name=cat,
                legendgroup=cat,  # one legend entry hides or shows the category in every panel
                showlegend=panel == 0,
                text=names[idx],
                customdata=idx,  # the point's index, for the click (CLICK_JS)
                hovertemplate="%{text}<extra>" + cat + "</extra>",
                marker={"size": 6, "opacity": 0.75, "color": colour},
            )
            fig.add_trace(trace, row=row + 1, col=col + 1)
        if lam in spots:
            star = go.Scatter(
                x=[spots[lam][0]],
                y=[spots[lam][1]],
                mode="markers",
                name="your image",
                legendgroup="your image",
                showlegend=not any(t.name == "your image" for t in fig.data),
                hovertemplate=f"your image (λ = {lam})<extra></extra>",
                marker={
                    "size": 18,
                    "symbol": "star",
                    "color": "black",
                    "line": {"width": 2, "color": "white"},
                },
            )
            fig.add_trace(star, row=row + 1, col=col + 1)
    fig.update_xaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    fig.update_layout(
        height=PANEL_HEIGHT * rows + 90,
        margin={"l": 10, "r": 10, "t": 60, "b": 10},  # the top: panel titles clear the plot's label
        legend={"itemsizing": "constant", "orientation": "h", "y": -0.02, "yanchor": "top"},
        hovermode="closest",
    )
    return fig


class HeldOutImages:
    """The original held-out images by emoji name, from a prepared emoji .npz, read on first use."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._by_name: dict[str, list[tuple[np.ndarray, str]]] | None = None
        self._lock = threading.Lock()

    @classmethod
    def from_env(cls) -> HeldOutImages:
        named = os.environ.get(IMAGES_ENV)
        return cls(Path(named) if named else DEFAULT_IMAGES if DEFAULT_IMAGES.is_file() else None)

    def _load(self) -> dict[str, list[tuple[np.ndarray, str]]]:
        if self.path is None or not self.path.is_file():
            return {}
        with np.load(self.path, allow_pickle=False) as data:
            keep = np.flatnonzero(data["split"] == "heldout") if "split" in data.files else None
            names = data["name"] if keep is None else data["name"][keep]
            styles = data["style"] if "style" in data.files else np.array([""] * len(data["name"]))
            styles = styles if keep is None else styles[keep]
            images = data["images"] if keep is None else data["images"][keep]  # (K, H, W, 3)
        by_name: dict[str, list[tuple[np.ndarray, str]]] = {}
        for image, name, style in zip(images, names, styles, strict=True):
            by_name.setdefault(str(name), []).append((image, str(style)))
        return by_name

    def get(self, name: str) -> list[tuple[Image.Image, str]]:
        """(image, style) for each held-out style of the emoji called `name`; [] when unknown."""
        with self._lock:
            if self._by_name is None:
                try:
                    self._by_name = self._load()
                except (OSError, KeyError, ValueError) as err:  # a wrong file: no originals, said once
                    gr.Warning(f"No original emoji images: {self.path} cannot be read ({err}).")
                    self._by_name = {}
            return [(Image.fromarray(im), style) for im, style in self._by_name.get(name, [])]


def _glyph(name: str) -> str:
    """The emoji as a character, where its name is a Unicode name ("grinning face" -> 😀)."""
    try:
        return unicodedata.lookup(name)
    except KeyError:
        return ""


class ManifoldView:
    """The tab's handlers, over the Explorer's models and manifold."""

    def __init__(self, app: Explorer, images: HeldOutImages | None = None) -> None:
        self.app = app
        self.images = images if images is not None else HeldOutImages.from_env()

    def names(self) -> list[str]:
        m = self.app.manifold()
        return sorted(set(m.names)) if m is not None else []

    def example_name(self, example: str | None) -> str | None:
        """The emoji an example file shows, if the map holds it: assets/examples are named
        <style>-<name with underscores>.png ("google-grinning_face.png" -> "grinning face")."""
        name = Path(example).stem.partition("-")[2].replace("_", " ") if example else ""
        return name if name in self.names() else None

    def _model_for(self, lam: str) -> tuple[str | None, str]:
        """The label of λ's model (None: the default's) and a note when it is the default's: the model
        whose tokens the map holds at λ where it is here, else the first model with that λ."""
        m = self.app.manifold()
        owner = m.setting_models.get(lam) if m is not None else None
        if owner is not None and owner in self.app.models.labels:
            return owner, ""
        label = self.app.models.by_lambda(lam)
        if label is not None:
            return label, ""
        return None, f"no loaded model has λ = {lam}, so `{self.app.models.default}` encoded it"

    @friendly_errors
    def plot(
        self,
        image: str | None,
        progress: gr.Progress = gr.Progress(track_tqdm=False),  # noqa: B008 (Gradio's idiom)
    ) -> tuple[Any, str]:
        m = self.app.manifold()
        if m is None:
            return None, (
                f"No precomputed manifold at `{self.app.manifold_path.name}` yet: it is written by "
                "`train/export.py` (held-out tokens of each shipped tokenizer). The other tabs work without it."
            )
        if not m.settings:
            return None, "The manifold file holds no settings."
        note = f"{len(m.names)} held-out tokens, λ = {', '.join(m.settings)}. Click a point to see its emoji."
        spots: dict[str, np.ndarray] = {}
        if image:
            chosen = {lam: self._model_for(lam) for lam in m.settings}  # λ -> (label, note)
            picture = open_upload(image, self.app.input_size(*(label for label, _ in chosen.values())))
            z_by_model: dict[str | None, np.ndarray] = {}  # one encode per model
            lines = []
            for i, (lam, (label, fallback)) in enumerate(chosen.items()):
                progress((i, len(chosen)), desc=f"λ = {lam}")
                if label not in z_by_model:
                    z_by_model[label] = (
                        self.app.model(label).encode(picture).reshape(-1).float().cpu().numpy()
                    )
                z, tokens = z_by_model[label], m.settings[lam]["tokens"].astype(np.float32)  # (D,), (N, D)
                head = f"- **λ = {lam}** (`{label or self.app.models.default}`{'; ' + fallback if fallback else ''})"
                if z.shape[0] != tokens.shape[1]:
                    lines.append(
                        f"{head}: cannot place it, its token has {z.shape[0]} numbers, the map's {tokens.shape[1]}."
                    )
                    continue
                spots[lam] = place(z, tokens, m.settings[lam]["xy"])
                lines.append(f"{head}: {', '.join(m.names[j] for j in nearest(z, tokens, 5))}")
            note += "\n\n**Your image's nearest neighbours**\n\n" + "\n".join(lines)
        return small_multiples(m, spots), note

    def _show(self, points: list[int]) -> tuple[outputs.Gallery, str]:
        """The emoji of these points (one name): its originals, and each point's token decoded by
        the model of every λ."""
        m = self.app.manifold()
        if m is None or not points:
            return [], ""
        name, category = m.names[points[0]], m.categories[points[0]]
        images, captions = [], []
        originals = self.images.get(name)
        for image, style in originals:
            images.append(image)
            captions.append(f"original{f' ({style})' if style else ''}")
        missing = []
        for lam, setting in m.settings.items():
            label, _ = self._model_for(lam)
            model = self.app.model(label) if label is not None else None
            if model is None or model.token_dim != setting["tokens"].shape[1]:
                missing.append(lam)
                continue
            tokens = torch.from_numpy(setting["tokens"][points].astype(np.float32))[:, None, :]  # (P, 1, D)
            for k, decoded in enumerate(model.decode(tokens, seed=0)):
                images.append(decoded)
                captions.append(f"λ = {lam}" + (f" · point {k + 1}" if len(points) > 1 else ""))
        text = f"**{name}** {_glyph(name)} · {category}"
        if originals:
            text += f" · originals from `{self.images.path.name if self.images.path else ''}`"
        else:
            text += f" · no original images here (set `{IMAGES_ENV}` to a prepared emoji .npz)"
        text += " · its stored token decoded by each λ's model, seed 0"
        if missing:
            text += f" (no model for λ = {', '.join(missing)})"
        return (outputs.gallery(images, captions) if images else []), text

    @friendly_errors
    def show_name(self, name: str | None) -> tuple[outputs.Gallery, str]:
        """Every point called `name` (one per style in the map)."""
        m = self.app.manifold()
        if m is None or not name:
            return [], ""
        points = [i for i, n in enumerate(m.names) if n == name]
        if not points:
            raise gr.Error(f"No emoji called {name!r:.60} on the map.")
        return self._show(points)

    @friendly_errors
    def show_point(self, clicked: str | None) -> tuple[outputs.Gallery, str, Any]:
        """A click (CLICK_JS writes "<index> <time>"): that point's emoji; the dropdown follows."""
        m = self.app.manifold()
        head = (clicked or "").split(" ")[0]
        if m is None or not head.isdigit() or int(head) >= len(m.names):
            return gr.skip(), gr.skip(), gr.skip()
        shown, text = self._show([int(head)])
        return shown, text, gr.update(value=m.names[int(head)])  # gr.Dropdown(value=) warns: no choices


def manifold_tab(demo: gr.Blocks, app: Explorer, examples: list[str]) -> None:
    # The tab opens on an example, placed in every panel, and on that emoji's originals and decodings
    # (where the map holds it), as the other image tabs open on one: not on an empty gallery.
    view = ManifoldView(app)
    opening = opening_images(examples, 1)[0]
    with gr.Row():
        man_image = image_input("Place an image in every panel (optional)", opening)
        with gr.Column():
            names = view.names()
            pick = gr.Dropdown(
                names,
                value=view.example_name(opening),
                label="Show an emoji (or click a point)",
                filterable=True,
            )
            clicked = gr.Textbox(visible="hidden", elem_id="manifold-click")  # filled by CLICK_JS
            emoji_note = gr.Markdown()
    emoji = gallery("The emoji: originals, and its token decoded at each λ", columns=8)
    if examples:
        gr.Examples(examples, inputs=[man_image], label="Examples")
    plot = gr.Plot(label="Held-out tokens in 2-D (UMAP, cosine), one panel per λ", elem_id="manifold-plot")
    man_note = gr.Markdown()
    gr.on([demo.load, man_image.change], view.plot, [man_image], [plot, man_note], api_name="manifold")
    demo.load(None, js=CLICK_JS)
    gr.on([demo.load, pick.input], view.show_name, pick, [emoji, emoji_note], api_name="manifold_emoji")
    clicked.change(view.show_point, clicked, [emoji, emoji_note, pick], api_visibility="private")
