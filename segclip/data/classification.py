"""Datasets of the analyses: ImageNet val (wnid folders or the flat ILSVRC2012 files) and Stanford Cars (devkit
``.mat`` files), read into one :class:`ImageSet` and validated before any model work (plain folders and the
``--dataset`` dispatch: :mod:`segclip.analysis.datasets`).

ImageNet labels are indices into the 1000 wnids in sorted order (``classnames/imagenet_wnids.txt``; torchvision's
``ImageFolder`` order), and the class text names are open_clip's standard ``IMAGENET_CLASSNAMES`` in that order.
The flat layout's ``ILSVRC2012_validation_ground_truth.txt`` holds ILSVRC2012_IDs, the devkit's own class order
(``data/meta.mat``), not the sorted-wnid order: they are mapped through the leaf synsets of ``meta.mat``.

The standard text names repeat two names ('missile' for classes 657 and 744, 'sunglasses' for 836 and 837).
Zero-shot classification over them is standard practice: their prompts are identical, so their logits tie
exactly, and the lower class index wins the tie (``argmax`` returns the first maximum); :func:`duplicate_names`
lists them for the result files. Segmentation class lists keep refusing duplicates
(:func:`segclip.models.text.check_class_names`).

Stanford Cars' class names end in the model year and usually name the body ('AM General Hummer SUV 2000' ->
year 2000, body SUV); both become per-image attributes (grouping keys) and the body types 0/1 concept labels.
"""
from __future__ import annotations

import csv
import logging
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segclip.data.images import IMAGE_EXTENSIONS, list_images
from segclip.errors import DataError

log = logging.getLogger(__name__)

IMAGENET_VAL_IMAGES = 50_000
STANFORD_CARS_IMAGES = {"train": 8_144, "test": 8_041}
STANFORD_CARS_CLASSES = 196
# Body types named in Stanford Cars' class names, as (token, body); the last recognised token of a name wins
# ('Ram C/V Cargo Van Minivan 2012' -> Minivan). Pickups name their cab ('Crew Cab', 'Extended Cab', 'SuperCab').
BODY_TOKENS = {"convertible": "Convertible", "coupe": "Coupe", "sedan": "Sedan", "suv": "SUV",
               "hatchback": "Hatchback", "wagon": "Wagon", "minivan": "Minivan", "van": "Van", "cab": "Cab",
               "supercab": "Cab"}
BODY_TYPES = ("Convertible", "Coupe", "Sedan", "SUV", "Hatchback", "Wagon", "Minivan", "Van", "Cab")
UNKNOWN = "unknown"
TIE_RULE = "identical text names have identical embeddings; an exact tie goes to the lowest class index"
FLAT_IMAGE = re.compile(r"ILSVRC2012_val_(\d{8})\.(jpeg|jpg|png)$", re.IGNORECASE)


@dataclass
class ImageSet:
    """An image list with what the analyses need to know about it.

    Attributes:
        paths: (n) image files; image ``i`` of every result is ``paths[i]``.
        labels: (n,) long class indices into ``class_names``, or None (unlabelled).
        class_names: the class text names (may repeat, see :func:`duplicate_names`).
        attributes: per-image grouping keys, ``{key: [value of image i]}`` (e.g. ``year``, ``body``, ``colour``).
        concepts: per-image 0/1 ground truth, ``{concept: (n,) float}`` (e.g. ``convertible``, ``yellow``).
        description: what was read (dataset, layout, root, split, counts, class-name source, duplicates,
            tie rule), for result files.
    """

    paths: list[Path]
    labels: torch.Tensor | None
    class_names: list[str]
    attributes: dict[str, list[str]] = field(default_factory=dict)
    concepts: dict[str, torch.Tensor] = field(default_factory=dict)
    description: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.paths)

    def groups(self, key: str) -> list[str]:
        """The per-image values of one grouping key.

        Raises:
            DataError: the dataset has no such key (the message lists the keys it has).
        """
        if key not in self.attributes:
            raise DataError(f"{self.description.get('dataset', 'this dataset')} has no grouping key '{key}'; "
                            f"use one of {sorted(self.attributes) or '(none)'}")
        return self.attributes[key]


def duplicate_names(names: list[str]) -> dict[str, list[int]]:
    """Text names that occur more than once (case-insensitive, stripped) -> their class indices, in order.

    Example:
        >>> duplicate_names(["cat", "missile", "dog", "Missile"])
        {'missile': [1, 3]}
    """
    seen: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        seen.setdefault(str(name).strip().lower(), []).append(index)
    return {name: indices for name, indices in seen.items() if len(indices) > 1}


def imagenet_wnids() -> list[str]:
    """The 1000 ILSVRC2012 wnids, sorted (the label order of torchvision's ``ImageFolder`` and of open_clip's names).

    Example:
        >>> wnids = imagenet_wnids()
        >>> len(wnids), wnids[0], wnids[-1]
        (1000, 'n01440764', 'n15075141')
    """
    text = resources.files("segclip.data").joinpath("classnames", "imagenet_wnids.txt").read_text(encoding="utf-8")
    return text.split()


def imagenet_class_names() -> list[str]:
    """open_clip's 1000 standard ImageNet text names, in sorted-wnid order ('missile', 'sunglasses' twice).

    Example:
        >>> names = imagenet_class_names()
        >>> names[0], names[657] == names[744] == "missile"
        ('tench', True)
    """
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    return list(IMAGENET_CLASSNAMES)


def _images_under(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)


def _imagenet_description(root: Path, layout: str, count: int) -> dict[str, Any]:
    names = imagenet_class_names()
    if count != IMAGENET_VAL_IMAGES:
        log.warning("ImageNet val at %s has %d images, not the standard %d: results are not comparable with "
                    "published numbers", root, count, IMAGENET_VAL_IMAGES)
    return {"dataset": "imagenet", "layout": layout, "root": str(root), "split": "val", "images": count,
            "standard_images": IMAGENET_VAL_IMAGES, "classes": len(names),
            "class_names": "open_clip.zero_shot_metadata.IMAGENET_CLASSNAMES (sorted-wnid order)",
            "duplicate_text_names": duplicate_names(names), "tie_rule": TIE_RULE}


def _find(root: Path, name: str) -> Path | None:
    for folder in (root / "ILSVRC2012_devkit_t12" / "data", root / "data", root, root.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def _whole_number(value: Any) -> int:
    """A MATLAB numeric scalar as an int; ValueError for text, fractions or arrays of several values."""
    array = np.asarray(value)
    if array.size != 1 or array.dtype.kind not in "iuf":
        raise ValueError(f"not a number: {value!r}")
    number = float(array.reshape(()))
    if not number.is_integer():
        raise ValueError(f"not a whole number: {value!r}")
    return int(number)


def _read_mat_struct(path: str | Path, key: str, fields: tuple[str, ...], fix: str, what: str) -> np.ndarray:
    """``loadmat(path, squeeze_me=True)[key]``, checked to be a struct (array) with ``fields``.

    Raises:
        DataError: unreadable (empty, truncated, not a MATLAB file), no ``key``, or ``key`` not a struct with
            ``fields`` (one line naming the file, what is wrong and ``fix``).
    """
    import scipy.io

    try:
        data = scipy.io.loadmat(str(path), squeeze_me=True)
    except Exception as err:  # MatReadError (empty file), ValueError, TypeError, OSError, ... from scipy
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"{path} is not a readable MATLAB file ({message}); {fix}") from None
    if key not in data:
        found = sorted(k for k in data if not k.startswith("__"))
        raise DataError(f"{path} has no '{key}' (it holds {found or 'nothing'}); it is not {what}; {fix}")
    struct = data[key]
    names = getattr(getattr(struct, "dtype", None), "names", None) or ()
    missing = [f for f in fields if f not in names]
    if missing:
        kind = "a struct" if names else f"a {type(struct).__name__} of {getattr(struct, 'dtype', '?')}"
        raise DataError(f"{path}: '{key}' is {kind} without the fields {missing}; it is not {what}; {fix}")
    return struct


def read_imagenet_meta(path: str | Path) -> dict[int, str]:
    """ILSVRC2012_ID -> wnid of the 1000 leaf synsets (``num_children == 0``) of the devkit's ``data/meta.mat``.

    Raises:
        DataError: unreadable, not the devkit's structure, or not 1000 known leaf wnids.
    """
    fix = "extract ILSVRC2012_devkit_t12.tar.gz again (data/meta.mat)"
    synsets = _read_mat_struct(path, "synsets", ("ILSVRC2012_ID", "WNID", "num_children"), fix,
                               "the ILSVRC2012 devkit's meta.mat")
    ids, wnids, children = (np.atleast_1d(synsets[k]) for k in ("ILSVRC2012_ID", "WNID", "num_children"))
    leaves = {}
    for row, (i, w, c) in enumerate(zip(ids, wnids, children)):
        try:
            number, count = _whole_number(i), _whole_number(c)
        except (TypeError, ValueError):
            raise DataError(f"{path}: synset {row} has ILSVRC2012_ID {i!r} and num_children {c!r}, not numbers; "
                            f"{fix}") from None
        if count == 0:
            leaves[number] = str(w)
    unknown = sorted(set(leaves.values()) - set(imagenet_wnids()))
    if len(leaves) != 1000 or unknown:
        raise DataError(f"{path} has {len(leaves)} leaf synsets{f', unknown wnids {unknown[:5]}' if unknown else ''}; "
                        "expected the 1000 ILSVRC2012 classes")
    return leaves


def read_imagenet(root: str | Path) -> ImageSet:
    """ImageNet val, in either layout, labelled in sorted-wnid order with open_clip's 1000 text names.

    Layouts (``root`` or ``root/val``):

    - wnid folders (torchvision ``ImageFolder``): ``<wnid>/*.JPEG``; a subset of the 1000 folders is accepted.
    - flat ILSVRC2012 files: ``ILSVRC2012_val_00000001.JPEG`` ... with ``ILSVRC2012_validation_ground_truth.txt``
      (line k: the ILSVRC2012_ID of image k) and the devkit's ``meta.mat``, found in ``ILSVRC2012_devkit_t12/data``,
      ``data`` or the folder itself.

    Args:
        root: the dataset folder.

    Returns:
        The :class:`ImageSet` (``description['layout']`` is ``folder`` or ``flat``).

    Raises:
        DataError: no ImageNet layout found, unknown wnid folders, empty folders, missing ground truth or devkit
            files, or a ground truth that does not cover the images (the message names the file and the fix).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"ImageNet folder {root} does not exist; pass --data-root with the folder holding val/")
    base = root / "val" if (root / "val").is_dir() else root
    wnids = imagenet_wnids()
    index = {w: i for i, w in enumerate(wnids)}
    folders = sorted(p.name for p in base.iterdir() if p.is_dir() and re.fullmatch(r"n\d{8}", p.name))
    flat = [p for p in _images_under(base) if FLAT_IMAGE.match(p.name)]
    if folders:
        unknown = [f for f in folders if f not in index]
        if unknown:
            raise DataError(f"{base} has folders {unknown[:5]} that are not ILSVRC2012 wnids")
        paths, labels = [], []
        for folder in folders:
            found = list_images(base / folder)
            paths += found
            labels += [index[folder]] * len(found)
        if len(folders) != 1000:
            log.warning("ImageNet at %s has %d of the 1000 class folders", base, len(folders))
        return ImageSet(paths, torch.tensor(labels), imagenet_class_names(),
                        {"class": [wnids[i] for i in labels]}, description=_imagenet_description(base, "folder",
                                                                                                 len(paths)))
    if not flat:
        raise DataError(f"{base} holds neither wnid folders (val/n01440764/...) nor ILSVRC2012_val_*.JPEG files; "
                        "extract ILSVRC2012_img_val.tar there")
    truth, meta = _find(root, "ILSVRC2012_validation_ground_truth.txt"), _find(root, "meta.mat")
    if truth is None or meta is None:
        missing = " and ".join(n for n, p in (("ILSVRC2012_validation_ground_truth.txt", truth), ("meta.mat", meta))
                               if p is None)
        raise DataError(f"the flat ImageNet val at {base} needs {missing}; extract ILSVRC2012_devkit_t12.tar.gz "
                        f"into {root} (they are in ILSVRC2012_devkit_t12/data/)")
    id_to_wnid = read_imagenet_meta(meta)
    try:
        ids = [int(line) for line in truth.read_text(encoding="utf-8-sig").split()]  # a byte-order mark dropped
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"cannot read {truth} as one ILSVRC2012_ID per line: {err}") from None
    bad = sorted({i for i in ids if i not in id_to_wnid})
    if bad:
        raise DataError(f"{truth} holds ids {bad[:5]} that are not leaf ILSVRC2012_IDs of {meta}")
    numbers = [int(FLAT_IMAGE.match(p.name).group(1)) for p in flat]
    beyond = [p.name for p, k in zip(flat, numbers) if not 1 <= k <= len(ids)]
    if beyond:
        raise DataError(f"{truth} has {len(ids)} lines but images {beyond[:3]} need more; it does not belong to "
                        f"these images")
    labels = [index[id_to_wnid[ids[k - 1]]] for k in numbers]
    return ImageSet(flat, torch.tensor(labels), imagenet_class_names(), {"class": [wnids[i] for i in labels]},
                    description={**_imagenet_description(base, "flat", len(flat)), "ground_truth": str(truth),
                                 "meta": str(meta)})


def parse_car_name(name: str) -> tuple[str, str]:
    """(model year, body type) of a Stanford Cars class name; ``unknown`` where the name has none.

    The year is the trailing 4-digit number; the body is the last recognised token of :data:`BODY_TOKENS`.

    Example:
        >>> parse_car_name("AM General Hummer SUV 2000")
        ('2000', 'SUV')
        >>> parse_car_name("Ford F-150 Regular Cab 2012"), parse_car_name("Acura TL Type-S 2008")
        (('2012', 'Cab'), ('2008', 'unknown'))
    """
    tokens = name.split()
    year = tokens[-1] if tokens and re.fullmatch(r"(19|20)\d\d", tokens[-1]) else UNKNOWN
    body = next((BODY_TOKENS[t.lower()] for t in reversed(tokens) if t.lower() in BODY_TOKENS), UNKNOWN)
    return year, body


def _loadmat(path: Path, key: str, fix: str, fields: tuple[str, ...] = ()):
    """A Stanford Cars devkit entry; with ``fields``, checked to be a struct holding them."""
    import scipy.io

    if not path.is_file():
        raise DataError(f"Stanford Cars: {path} is missing; {fix}")
    if fields:
        try:
            return _read_mat_struct(path, key, fields, fix, "a Stanford Cars devkit file")
        except DataError as err:
            raise DataError(f"Stanford Cars: {err}") from None
    try:
        return scipy.io.loadmat(str(path), squeeze_me=True)[key]
    except KeyError:
        raise DataError(f"Stanford Cars: {path} has no '{key}'; {fix}") from None
    except Exception as err:  # MatReadError (empty file), ValueError, TypeError, OSError, ... from scipy
        message = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DataError(f"Stanford Cars: {path} is not a readable MATLAB file ({message}); {fix}") from None


def read_colours(path: str | Path, names: list[str]) -> list[str]:
    """Colour per image from a CSV with columns ``image`` (file name) and ``colour``, in the order of ``names``.

    Raises:
        DataError: unreadable file, missing columns, or images without a colour row.
    """
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # a byte-order mark dropped
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"cannot read the colour CSV {path}: {err}") from None
    if not rows or not {"image", "colour"} <= set(rows[0]):
        raise DataError(f"colour CSV {path} needs a header with columns 'image' and 'colour' and one row per image")
    colours = {row["image"].strip(): row["colour"].strip().lower() for row in rows}
    missing = [n for n in names if not colours.get(n)]
    if missing:
        raise DataError(f"colour CSV {path} has no colour for {len(missing)} images, e.g. {missing[:3]}")
    return [colours[n] for n in names]


def read_stanford_cars(root: str | Path, split: str = "train", colours: str | Path | None = None) -> ImageSet:
    """Stanford Cars in torchvision's layout, with year and body type (and colour) per image.

    Layout (``root`` or ``root/stanford_cars``): ``devkit/cars_meta.mat`` (``class_names``),
    ``devkit/cars_train_annos.mat`` and ``cars_test_annos_withlabels.mat`` (``annotations``: ``fname``,
    1-based ``class``), ``cars_train/``, ``cars_test/``.

    Args:
        root: the dataset folder.
        split: ``train`` (the paper's) or ``test``.
        colours: optional CSV with columns ``image`` and ``colour`` (the authors' colour labels are not public).

    Returns:
        The :class:`ImageSet`: labels in ``cars_meta`` order, attributes ``class``, ``year``, ``body`` (and
        ``colour``), concepts: each body type in lower case (``convertible`` ...) and each colour, 0/1.

    Raises:
        DataError: missing or malformed devkit files, class ids out of range, missing images, a bad colour CSV.
    """
    if split not in STANFORD_CARS_IMAGES:
        raise DataError(f"Stanford Cars split '{split}' does not exist; use train or test")
    base = Path(root)
    base = base / "stanford_cars" if (base / "stanford_cars").is_dir() else base
    fix = f"put torchvision's Stanford Cars layout under {base} (devkit/, cars_train/, cars_test/)"
    names = [str(n) for n in np.atleast_1d(_loadmat(base / "devkit" / "cars_meta.mat", "class_names", fix))]
    annos = (base / "devkit" / "cars_train_annos.mat" if split == "train"
             else base / "cars_test_annos_withlabels.mat")
    annotations = _loadmat(annos, "annotations", fix, ("fname", "class"))
    try:
        entries = [(str(a), _whole_number(c)) for a, c in zip(np.atleast_1d(annotations["fname"]).reshape(-1),
                                                               np.atleast_1d(annotations["class"]).reshape(-1))]
    except (ValueError, KeyError, TypeError, IndexError) as err:
        raise DataError(f"Stanford Cars: {annos} annotations hold a 'class' that is not a number ({err}); "
                        f"{fix}") from None
    unsafe = next((f for f, _ in entries if Path(f).name != f or f in ("", ".", "..")), None)
    if unsafe is not None:
        raise DataError(f"Stanford Cars: {annos} names the image {unsafe!r}, which leaves cars_{split}/; {fix}")
    bad = sorted({c for _, c in entries if not 1 <= c <= len(names)})
    if bad:
        raise DataError(f"Stanford Cars: {annos} has class ids {bad[:5]} outside 1..{len(names)} (they are 1-based)")
    folder = base / f"cars_{split}"
    paths = [folder / fname for fname, _ in entries]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"Stanford Cars: {len(missing)} images of {annos.name} are missing from {folder}, e.g. "
                        f"{missing[:3]}; {fix}")
    labels = torch.tensor([c - 1 for _, c in entries])
    if len(names) != STANFORD_CARS_CLASSES or len(paths) != STANFORD_CARS_IMAGES[split]:
        log.warning("Stanford Cars %s at %s has %d images of %d classes, not the standard %d of %d", split, base,
                    len(paths), len(names), STANFORD_CARS_IMAGES[split], STANFORD_CARS_CLASSES)
    parsed = [parse_car_name(names[c]) for c in labels.tolist()]
    attributes = {"class": [names[c] for c in labels.tolist()], "year": [y for y, _ in parsed],
                  "body": [b for _, b in parsed]}
    concepts = {body.lower(): torch.tensor([float(b == body) for _, b in parsed]) for body in BODY_TYPES}
    description = {"dataset": "stanford_cars", "root": str(base), "split": split, "images": len(paths),
                   "standard_images": STANFORD_CARS_IMAGES[split], "classes": len(names),
                   "body_types": list(BODY_TYPES), "unknown_body": sum(b == UNKNOWN for _, b in parsed)}
    if colours is not None:
        attributes["colour"] = read_colours(colours, [p.name for p in paths])
        for colour in sorted(set(attributes["colour"])):
            concepts[colour] = torch.tensor([float(c == colour) for c in attributes["colour"]])
        description["colours"] = str(colours)
    return ImageSet(paths, labels, names, attributes, concepts, description)
