"""``segclip segment`` as a library call: image files and a class list -> per image a label PNG, an overlay with
a legend and (``heatmaps``) one probability heatmap per class; config -> run -> result -> write.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segclip.config import ShortRepr, check_figure_options, dpi_option, figure_format_option, option
from segclip.data.images import check_image
from segclip.data.images import ImageFolderDataset
from segclip.errors import ConfigError, OutputError
from segclip.io import atomic_write_bytes, read_lines, write_result
from segclip.models.loading import ModelSource, resolve_model
from segclip.models.text import check_class_names
from segclip.process import make_trainer, quiet_lightning, run_loop
from segclip.segment.lightning import SegmentationData, SegmentationTask
from segclip.segment.methods import METHODS
from segclip.segment.options import MethodOptions, prepare_methods, segmentation_provenance
from segclip.segment.refine import refine_stitched
from segclip.segment.results import check_writable
from segclip.viz.overlay import heatmap, overlay, picture_bytes
from segclip.viz.palette import class_colours, label_format, label_png


@dataclass(frozen=True, kw_only=True)
class SegmentConfig(MethodOptions):
    """Options of ``segclip segment``."""

    images: tuple[Path, ...] = option(positional=True, help="image files.")
    out: Path = option(help="output folder.")
    classes: tuple[str, ...] | None = option(None, help='comma-separated class names, e.g. "sand,water,star,ring" (the bundled model knows 12: '
                                                    'sky, grass, water, sand, wall, snow, ball, box, star, triangle, '
                                                    'diamond, ring).')
    classes_file: Path | None = option(None, help="UTF-8 file with one class name a line.")
    method: str = option("neuron-head", choices=METHODS, help="method (default: neuron-head).")
    heatmaps: bool = option(False, help="also write one heatmap per class.")
    background_threshold: float | None = option(None, help="label pixels whose top class probability is below this "
                                                           "as background.")
    overwrite: bool = option(False, help="replace existing outputs.")
    figure_format: str = figure_format_option()
    dpi: int = dpi_option()

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.classes, str):  # SegmentConfig(classes="sky,ring"): names, never letters
            object.__setattr__(self, "classes", tuple(c.strip() for c in self.classes.split(",")))
        if isinstance(self.images, (str, Path)):
            object.__setattr__(self, "images", (Path(self.images),))
        if not self.images:
            raise ConfigError("Name at least one image file.")
        threshold = self.background_threshold
        if threshold is not None and not 0 < threshold < 1:
            raise ConfigError(f"--background-threshold must be between 0 and 1, got {threshold}.")
        if self.classes is not None and self.classes_file is not None:
            raise ConfigError("Pass either --classes or --classes-file, not both.")
        check_figure_options(self)


def read_class_list(config: SegmentConfig) -> list[str] | None:
    """Class names from ``classes`` or ``classes_file`` (UTF-8, one a line), or None when neither is given.

    Raises:
        DataError: an unreadable or non-UTF-8 file.
        ConfigError: blank or duplicate names.
    """
    if config.classes_file is not None:
        return check_class_names(read_lines(config.classes_file, "class file", skip_blank=True))
    if config.classes is not None:
        return check_class_names(list(config.classes))
    return None


@dataclass
class SegmentResult(ShortRepr):
    """What ``segment`` wrote.

    Attributes:
        files: per image id, the files written for it (label PNG, overlay, heatmaps).
        record: the contents of ``segment.json`` (method, parameters, label values, protocol).
    """

    files: dict[str, list[Path]]
    record: dict[str, Any]

    def write(self, out: str | Path) -> list[Path]:
        """Write ``segment.json`` in the result envelope (the label maps and overlays are written while
        segmenting)."""
        results = {k: v for k, v in self.record.items() if k != "protocol"}
        return [write_result(Path(out) / "segment.json", self.record.get("protocol", {}), results, self.summary())]

    def summary(self) -> str:
        return f"segmented {len(self.files)} image(s): {sum(len(f) for f in self.files.values())} files\n"


def heatmap_file_name(index: int, name: str) -> str:
    """A file name for class ``index``'s heatmap that is safe for any class name: its index (unique), then the name
    with characters outside ``[A-Za-z0-9_-]`` replaced and cut to 40 characters.

    Example:
        >>> heatmap_file_name(3, "traffic light / signal " * 10)
        '03_traffic_light___signal_traffic_light___s.png'
    """
    safe = "".join(ch if ch.isascii() and (ch.isalnum() or ch in "-_") else "_" for ch in name)
    return f"{index:02d}_{safe[:40]}.png"


def plan_outputs(config: SegmentConfig, dataset: ImageFolderDataset, names: list[str]) -> dict[str, list[Path]]:
    """Every file a ``segment`` run will write, per image: label map, overlay, then the heatmaps (if asked).

    Raises:
        OutputError: two outputs would have the same path (e.g. images ``a.jpg`` and ``a_overlay.jpg``), an output
            would replace one of the input images (refused even with ``overwrite``), or outputs exist already
            (without ``overwrite``).
    """
    out = config.out
    suffix = "." + config.figure_format  # label maps are always PNG (data); overlays and heatmaps are figures
    plan = {image_id: [out / f"{image_id}.png", out / f"{image_id}_overlay{suffix}"]
            + ([(out / "heatmaps" / image_id / heatmap_file_name(i, n)).with_suffix(suffix)
                for i, n in enumerate(names)]
               if config.heatmaps else []) for image_id in dataset.ids}
    owner: dict[Path, str] = {}
    for image_id, paths in plan.items():
        for path in paths:
            key = path.resolve()
            if key in owner:
                raise OutputError(f"The outputs of images '{owner[key]}' and '{image_id}' would both be {path}; "
                                  "rename one of the images, or segment them into different --out folders.")
            owner[key] = image_id
    inputs = {p.resolve(): p for p in dataset.paths}
    clobbered = [inputs[k] for k in owner if k in inputs]
    if clobbered:
        raise OutputError(f"An output would replace the input image {clobbered[0]}; choose another --out (inputs are "
                          "never overwritten, not even with --overwrite).")
    existing = [p for p in [*owner, (out / "segment.json").resolve()] if p.exists()]
    if existing and not config.overwrite:
        raise OutputError(f"{len(existing)} output file(s) already exist (first: {existing[0]}); pass --overwrite "
                          "or choose another --out.")
    return plan


def run_segment(config: SegmentConfig, model: ModelSource) -> SegmentResult:
    """Segment image files by class names: per image a label PNG (class indices in list order), a colour overlay
    with a legend and, with ``heatmaps``, one probability heatmap per class.

    Args:
        config: the options (:class:`SegmentConfig`); without class names the bundled model's own classes are used.
        model: the loaded model, or a loader called once the inputs are checked.

    Returns:
        The :class:`SegmentResult` (write ``segment.json`` with ``result.write(config.out)``).

    Raises:
        ImageError: an unreadable image (checked before any model work).
        ConfigError: no class names for a model without its own, bad options.
        OutputError: outputs exist (without ``overwrite``) or cannot be written.

    Example:
        >>> import tempfile
        >>> from segclip.models import load_model
        >>> from segclip.paths import example_image_path
        >>> out = Path(tempfile.mkdtemp())
        >>> result = run_segment(SegmentConfig(images=(example_image_path(),), out=out, progress=False), load_model())
        >>> sorted(p.name for p in result.files["example"])
        ['example.png', 'example_overlay.png']
    """
    quiet_lightning(False)
    dataset = ImageFolderDataset(list(config.images))
    for path in dataset.paths:
        check_image(path)  # a missing or unreadable file fails before any model work; decoded once, later
    check_writable(config.out)
    names = read_class_list(config)
    if names is not None:  # check the outputs before any model work
        plan_outputs(config, dataset, names)
    model = resolve_model(model)
    names = names or list(model.info.classes)
    if not names:
        raise ConfigError('Name the classes: --classes "cat,dog,grass" or --classes-file FILE.')
    plan = plan_outputs(config, dataset, names)
    prepared = prepare_methods(model, names, [config.method], config, None)
    threshold = config.background_threshold
    files: dict[str, list[Path]] = {}

    def on_image(image_id: str, result, _confusions, image) -> None:
        segmentation = result[config.method]
        labels = segmentation.labels.numpy()  # at the original size, background threshold applied
        files_for = plan[image_id]
        written = [atomic_write_bytes(files_for[0], label_png(labels, names, background=threshold is not None))]
        picture = overlay(image, labels, names, background="background" if threshold is not None else None)
        written.append(atomic_write_bytes(files_for[1], picture_bytes(picture, config.figure_format, config.dpi)))
        del picture
        if config.heatmaps:  # one class at full resolution at a time
            refine = prepared.methods[0].refine
            if refine is None:
                maps = segmentation.stitched.probability_maps(image.shape[:2], prepared.protocol.temperature)
            else:  # the refined logits the labels came from, recomputed (not kept per image)
                maps = iter((refine_stitched(segmentation.stitched, image, refine)
                             * prepared.protocol.temperature).softmax(0))
            for probability, name, path in zip(maps, names, files_for[2:]):
                picture = heatmap(probability.cpu().numpy(), name)
                written.append(atomic_write_bytes(path, picture_bytes(picture, config.figure_format, config.dpi)))
        files[image_id] = written

    task = SegmentationTask(model, prepared.methods, prepared.protocol, len(names), crops_per_pass=config.batch_size,
                            intervention=prepared.intervention, background_threshold=threshold, on_image=on_image,
                            autocast=config.autocast)
    trainer = make_trainer(model.device, progress=config.progress and len(dataset) > 1)
    run_loop(trainer.predict, task, datamodule=SegmentationData(dataset, config.batch_size),
              return_predictions=False)
    record = segmentation_provenance(model, config, prepared, names,
                                   "given" if config.short_side else "4/3 of the crop (512 / 384 scaled)")
    summary = {"method": config.method, "params": prepared.params()[config.method],
               "background_threshold": threshold, "images": [str(p) for p in dataset.paths],
               "label_values": f"0..{len(names) - 1} in class-list order"
                               + (f", {len(names)} = background" if threshold is not None else ""),
               "label_format": label_format(len(names) + int(threshold is not None)),
               "class_colours": {name: "#%02x%02x%02x" % tuple(int(v) for v in colour)
                                 for name, colour in zip(names, class_colours(names))},
               "protocol": record}
    return SegmentResult(files, summary)
