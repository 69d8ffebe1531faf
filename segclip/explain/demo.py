"""``segclip demo``: a local Gradio app over :class:`~segclip.explain.attribution.ImageExplainer`.

Upload (or keep the bundled example) an image, type classes, choose model, weights and method, and segment: the
overlay names the classes on their regions, with one heatmap per class. Click a pixel of the overlay: its class
scores, the top units with their words and maps (and links to the explorer's pages with ``--site``). Tick units
and a scale (0 removes them): the segmentation before and after, side by side.

Private by construction: bound to 127.0.0.1, no share link, Gradio's analytics and version check off
(``GRADIO_ANALYTICS_ENABLED=False``), the default theme's fonts are served locally, no server-side rendering, no
API page. Gradio is an optional extra (``pip install "segclip[demo]"``), imported only when the app is built.
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from segclip.config import Config, option
from segclip.data.images import read_image
from segclip.errors import ConfigError
from segclip.explain.attribution import ImageExplainer, unit_words
from segclip.explain.intervention import UnitIntervention
from segclip.models.loading import CLIPResNet, ModelSource, load_model, resolve_model
from segclip.models.text import check_class_names
from segclip.paths import example_image_path
from segclip.segment.methods import METHODS, build_methods
from segclip.segment.pipeline import protocol_for
from segclip.viz.overlay import _font, heatmap, palette

log = logging.getLogger(__name__)

INSTALL = 'pip install "segclip[demo]"'
HOST = "127.0.0.1"
OFFLINE_ENVIRONMENT = {"GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_SSR_MODE": "False",
                       "HF_HUB_OFFLINE": "1", "GRADIO_TELEMETRY_ENABLED": "False"}


@dataclass(frozen=True, kw_only=True)
class DemoConfig(Config):
    """Options of ``segclip demo``."""

    port: int = option(7860, help="port on 127.0.0.1 (default: 7860; 0: a free one).")
    site: Path | None = option(None, help="an explorer folder (`segclip explore --out`): units link to its pages.")
    labels: Path | None = option(None, help="the --out folder (or label.csv) of `segclip analyze label`: the units' "
                                            "OMP words.")
    top: int = option(8, help="top units shown for a click (default: 8).")

    def __post_init__(self) -> None:
        super().__post_init__()  # field types (segclip.config.Config)
        if not 0 <= self.port < 65536:
            raise ConfigError(f"--port must be in 0..65535, got {self.port}.")
        if self.top < 1:
            raise ConfigError(f"--top must be at least 1, got {self.top}.")
        if self.site is not None and not (self.site / "index.html").is_file():
            raise ConfigError(f"{self.site} holds no index.html; pass the --out folder of `segclip explore`.")


def import_gradio() -> Any:
    """Gradio, with analytics and telemetry off (set before its import).

    Raises:
        ConfigError: Gradio is not installed (the message says how to install it).
    """
    for key, value in OFFLINE_ENVIRONMENT.items():
        os.environ[key] = value
    try:
        import gradio
    except ImportError:
        raise ConfigError(f"segclip demo needs Gradio: {INSTALL}") from None
    return gradio


def label_regions(image: np.ndarray, labels: np.ndarray, names: list[str], alpha: float = 0.5) -> Image.Image:
    """The colour overlay with each class's name written on its largest region (no legend strip, so pixels of
    the picture are pixels of the image).

    Args:
        image: ``(H, W, 3)`` uint8 RGB.
        labels: ``(H, W)`` labels ``0..C-1``.
        names: C class names.
        alpha: weight of the colours.

    Returns:
        An RGB image of the image's size.

    Example:
        >>> label_regions(np.zeros((8, 10, 3), np.uint8), np.zeros((8, 10), int), ["sky"]).size
        (10, 8)
    """
    import cv2

    colours = palette(len(names))
    blended = (image * (1 - alpha) + colours[labels] * alpha).astype(np.uint8)
    picture = Image.fromarray(blended)
    draw = ImageDraw.Draw(picture)
    font = _font(max(10, min(image.shape[:2]) // 25))
    for c, name in enumerate(names):
        mask = (labels == c).astype(np.uint8)
        if not mask.any():
            continue
        count, components, stats, centroids = cv2.connectedComponentsWithStats(mask, connectivity=4)
        biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        x, y = centroids[biggest]
        draw.text((float(x), float(y)), name, fill=(255, 255, 255), font=font, anchor="mm", stroke_width=2,
                  stroke_fill=(0, 0, 0))
    return picture


@dataclass
class DemoState:
    """What the app holds for one browser session: the explainer of the last segmentation, the last click."""

    explainer: ImageExplainer | None = None
    at: tuple[int, int] | None = None
    units: list[str] = field(default_factory=list)


class DemoApp:
    """The app's logic, independent of Gradio (tested directly; the Gradio layer only wires it).

    Args:
        model: the model the app starts with.
        top: top units per click.
        words: ``{unit key: words}``.
        site: explorer folder for links, or None.
        loader: ``(name, pretrained) -> model`` for other models (default: :func:`load_model` on the first
            model's device).
    """

    def __init__(self, model: CLIPResNet, top: int = 8, words: dict[str, str] | None = None,
                 site: Path | None = None, loader: Callable[[str, str], CLIPResNet] | None = None):
        self.models = {(model.info.name, model.info.pretrained): model}
        self.default = model
        self.top, self.words, self.site = top, words or {}, site
        self.loader = loader or (lambda name, pretrained: load_model(name, pretrained, device=model.device))

    def model(self, name: str, pretrained: str) -> CLIPResNet:
        key = (name.strip() or self.default.info.name, pretrained.strip() or self.default.info.pretrained)
        if key not in self.models:
            self.models[key] = self.loader(*key)
        return self.models[key]

    def default_classes(self) -> str:
        return ", ".join(self.default.info.classes) or "sky, grass, water"

    def segment(self, image: np.ndarray | None, classes: str, name: str, pretrained: str, method: str
                ) -> tuple[DemoState, Image.Image, list[tuple[Image.Image, str]], str]:
        """Segment: the state, the overlay, per-class heatmaps with captions, a status line.

        Raises:
            ConfigError: no image, bad class names or method.
        """
        if image is None:
            raise ConfigError("Upload an image first (or keep the example).")
        start = time.perf_counter()
        names = check_class_names([n.strip() for n in classes.split(",") if n.strip()])
        model = self.model(name, pretrained)
        image = np.ascontiguousarray(image[..., :3]).astype(np.uint8)
        built = build_methods(model, names, [method])[0]
        explainer = ImageExplainer(model, image, built, protocol_for(model))
        picture = label_regions(image, explainer.labels, names)
        maps = explainer.stitched.probability_maps(explainer.size, explainer.protocol.temperature)
        gallery = [(heatmap(p.cpu().numpy()), n) for p, n in zip(maps, names)]
        seconds = time.perf_counter() - start
        status = (f"Segmented {image.shape[1]}x{image.shape[0]} with {method} on {model.info.name} "
                  f"({len(names)} classes) in {seconds:.2f} s. Click a pixel of the segmentation.")
        return DemoState(explainer), picture, gallery, status

    def click(self, state: DemoState, x: int, y: int) -> tuple[DemoState, str, list[tuple[np.ndarray, str]], list[str]]:
        """A click at ``(x, y)``: the state, a markdown answer, the top units' maps, the unit choices.

        Raises:
            ConfigError: nothing segmented yet, or a point outside the image.
        """
        if state is None or state.explainer is None:
            raise ConfigError("Segment an image first.")
        start = time.perf_counter()
        explainer = state.explainer
        attribution = explainer.attribute(at=(x, y), top=self.top, words=self.words)
        names = attribution.names
        lines = [f"**({x}, {y}) is '{names[attribution.target]}'**: logit {attribution.logit:.4f}, margin "
                 f"{attribution.margin:+.4f} over '{names[attribution.runner_up]}'; the logit is the exact sum of "
                 f"{len(attribution.units)} {explainer.method.name} units.", "",
                 "| unit | contribution | margin | cos(unit, class) | words |", "|---|---|---|---|---|"]
        gallery = []
        for score in attribution.top:
            key = self._link(score.unit)
            lines.append(f"| {key} | {score.contribution:+.5f} | {score.margin:+.5f} | {score.cosine:+.3f} | "
                         f"{score.words or ''} |")
            limit = float(np.abs(score.map).max()) or 1.0
            rgb = _diverging(score.map / limit)
            gallery.append((rgb, f"{score.unit.key} {score.contribution:+.4f}"))
        scores = ", ".join(f"{n} {s:.3f}" for n, s in sorted(zip(names, attribution.scores), key=lambda t: -t[1]))
        lines += ["", f"Class logits: {scores}.", "",
                  f"Answered in {time.perf_counter() - start:.2f} s."]
        units = [s.unit.key for s in attribution.top if s.unit.kind != "bias"]
        return DemoState(explainer, (x, y), units), "\n".join(lines), gallery, units

    def _link(self, unit) -> str:
        if self.site is None or unit.kind == "bias":
            return unit.key
        anchor = f"#/pair/{unit.neuron}/{unit.head}" if unit.kind == "pair" else f"#/head/{unit.head}"
        return f"[{unit.key}](/gradio_api/file={(self.site / 'index.html').resolve()}{anchor})"

    def intervene(self, state: DemoState, chosen: list[str], scale: float
                  ) -> tuple[Image.Image | None, Image.Image | None, str]:
        """Scale the chosen units: the overlays before and after, and what changed."""
        if state is None or state.explainer is None:
            raise ConfigError("Segment an image first.")
        explainer = state.explainer
        names = explainer.names
        pairs, heads = {}, {}
        for key in chosen:
            kind, _, index = key.partition(" ")
            if kind == "pair":
                n, h = index.split(":")
                pairs[(int(n), int(h))] = float(scale)
            elif kind == "head":
                heads[int(index)] = float(scale)
        before = label_regions(explainer.image, explainer.labels, names)
        if not chosen:
            return before, before, "Tick units to remove or scale them."
        _, comparison = explainer.intervene(UnitIntervention(heads=heads, pairs=pairs))
        after = label_regions(explainer.image, comparison.after, names)
        moved = [f"{n} {b} -> {a} px" for n, (b, a) in comparison.pixels.items() if a != b]
        text = (f"Scaling {len(chosen)} unit(s) by {scale:g} changed {100 * comparison.changed:.2f}% of the pixels"
                + (f": {'; '.join(moved)}." if moved else "."))
        return before, after, text


def _diverging(values: np.ndarray) -> np.ndarray:
    """``(H, W)`` values in ``[-1, 1]`` -> RGB uint8, blue (negative) to white to red (positive)."""
    v = np.clip(values, -1, 1)[..., None]
    white = np.ones(3)
    rgb = np.where(v >= 0, white + v * (np.array([0.8, 0.1, 0.1]) - white),
                   white - v * (np.array([0.1, 0.2, 0.8]) - white))
    return (rgb * 255).astype(np.uint8)


def build_interface(app: DemoApp) -> Any:
    """The Gradio Blocks of the app (elements carry ``elem_id`` for tests)."""
    gr = import_gradio()

    def guarded(fn):
        def run(*args):
            try:
                return fn(*args)
            except ConfigError as error:
                raise gr.Error(str(error)) from None
        return run

    def on_segment(image, classes, name, pretrained, method):
        state, picture, gallery, status = app.segment(image, classes, name, pretrained, method)
        return state, picture, gallery, status, "", [], gr.update(choices=[], value=[]), None, None, ""

    def on_click(state, evt):
        x, y = (int(v) for v in evt.index)
        try:
            state, answer, gallery, units = app.click(state, x, y)
        except ConfigError as error:
            raise gr.Error(str(error)) from None
        return state, answer, gallery, gr.update(choices=units, value=[])

    on_click.__annotations__["evt"] = gr.SelectData  # a class, not a string: Gradio passes the event by it

    with gr.Blocks(title="segclip demo", analytics_enabled=False) as blocks:
        gr.Markdown("## segclip: why is this pixel a cat?\nSegment an image by class names, click a pixel to see "
                    "the units whose contributions sum to its class logit, tick units to remove or scale them.")
        state = gr.State(DemoState())
        with gr.Row():
            with gr.Column():
                image = gr.Image(type="numpy", label="image", sources=["upload"], elem_id="input-image")
                gr.Examples([[str(example_image_path())]], inputs=[image], label="or pick the example")
                classes = gr.Textbox(app.default_classes(), label="classes (comma-separated)", elem_id="classes")
                with gr.Row():
                    name = gr.Textbox(app.default.info.name, label="model", elem_id="model")
                    pretrained = gr.Textbox(app.default.info.pretrained, label="weights", elem_id="weights")
                    method = gr.Dropdown(list(METHODS), value="neuron-head", label="method", elem_id="method")
                segment = gr.Button("Segment", variant="primary", elem_id="segment")
                status = gr.Markdown(elem_id="status")
            with gr.Column():
                overlay_image = gr.Image(label="segmentation (click a pixel)", interactive=False,
                                         elem_id="segmentation")
                heatmaps = gr.Gallery(label="per-class heatmaps", columns=4, height="auto", elem_id="heatmaps")
        with gr.Row():
            with gr.Column():
                answer = gr.Markdown(elem_id="answer")
            with gr.Column():
                unit_maps = gr.Gallery(label="top units' contribution maps", columns=4, height="auto",
                                       elem_id="unit-maps")
        with gr.Row():
            units = gr.CheckboxGroup([], label="units to change", elem_id="units")
            scale = gr.Slider(0, 2, value=0, step=0.1, label="scale of the ticked units (0 removes)", elem_id="scale")
        with gr.Row():
            before = gr.Image(label="before", interactive=False, elem_id="before")
            after = gr.Image(label="after", interactive=False, elem_id="after")
        change = gr.Markdown(elem_id="change")
        segment.click(guarded(on_segment), [image, classes, name, pretrained, method],
                      [state, overlay_image, heatmaps, status, answer, unit_maps, units, before, after, change])
        overlay_image.select(on_click, [state], [state, answer, unit_maps, units])
        for trigger in (units.change, scale.release):
            trigger(guarded(app.intervene), [state, units, scale], [before, after, change])
    return blocks


@dataclass
class DemoServer:
    """A built app and how to launch it."""

    app: DemoApp
    config: DemoConfig
    started: float

    def launch(self, block: bool = True) -> tuple[Any, str]:
        """Start the server on 127.0.0.1; returns the Blocks and the local URL (blocks until stopped when
        ``block``)."""
        blocks = build_interface(self.app)
        gr = sys.modules["gradio"]
        allowed = [str(self.config.site.resolve())] if self.config.site is not None else None
        blocks.launch(server_name=HOST, server_port=self.config.port or None, share=False, inbrowser=False,
                      prevent_thread_lock=True, ssr_mode=False, footer_links=[], allowed_paths=allowed,
                      theme=gr.themes.Default(), quiet=True)
        return blocks, blocks.local_url

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.app.default.info.name, "port": self.config.port}


def run_demo(config: DemoConfig, model: ModelSource) -> DemoServer:
    """Build the demo for a model (the CLI's model flags; the bundled model by default).

    Args:
        config: the options (:class:`DemoConfig`).
        model: the model, or a loader.

    Returns:
        A :class:`DemoServer` (``launch()`` starts it).

    Raises:
        ConfigError: Gradio is missing (checked before the model loads), bad options.
    """
    started = time.perf_counter()
    import_gradio()
    words = None
    if config.labels is not None:
        from segclip.explore.site import read_labels
        words = unit_words(read_labels(config.labels))
    model = resolve_model(model)
    read_image(example_image_path())
    return DemoServer(DemoApp(model, config.top, words, config.site), config, started)


def serve_demo(server: DemoServer, config: DemoConfig) -> None:
    """Launch, print the URL and the start time, serve until interrupted (a server has no result to report)."""
    blocks, url = server.launch()
    sys.stdout.write(f"segclip demo on {url} (started in {time.perf_counter() - server.started:.1f} s; Ctrl-C "
                     "stops it)\n")
    sys.stdout.flush()
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        blocks.close()
