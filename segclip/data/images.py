"""Reading images and label maps, listing image folders, and CLIP normalisation.

Images come back as ``(H, W, 3)`` uint8 RGB whatever the file holds:

- grayscale, 1-bit, palette, CMYK and YCbCr are converted with Pillow (CMYK naively, ICC profiles ignored);
- 16-bit images keep their high byte (``v >> 8``), as Pillow does for 16-bit RGB PNGs and OpenCV's
  ``IMREAD_COLOR`` (mmsegmentation's loader) does for all of them; 8-bit values stored as 16 bit
  (``v * 257``) come back exactly;
- images with transparency (RGBA, LA, palette or colour-key transparency) are composited on white: the colour
  under a transparent pixel is undefined (often black), and white is what an image viewer shows;
- the EXIF orientation is applied, as OpenCV's ``imread`` does.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from segclip.errors import DataError, ImageError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
IGNORE_INDEX = 255
WIDE_IGNORE_INDEX = 65535  # ignore in the 16-bit labels of datasets with more than 255 classes


def _existing_file(path: str | Path) -> Path:
    """``path`` as a Path; ImageError unless it is an existing file (not a folder)."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"cannot read image {path}: the file does not exist")
    if path.is_dir():
        raise ImageError(f"cannot read image {path}: it is a folder, not an image file; pass the image files inside it "
                         f"(e.g. {path}/*.jpg)")
    if not path.is_file():
        raise ImageError(f"cannot read image {path}: not a file")
    return path


def _open(path: str | Path, exif: bool = True) -> Image.Image:
    """Open and fully decode an image file (applying its EXIF orientation if ``exif``); failures raise ImageError."""
    path = _existing_file(path)
    try:
        with Image.open(path) as opened:
            opened.load()
            return ImageOps.exif_transpose(opened) if exif else opened.copy()
    except UnidentifiedImageError:
        raise ImageError(f"cannot read image {path}: format not recognised (corrupt or not an image)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"cannot read image {path}: {error} (the file is corrupt or truncated)") from None


def check_image(path: str | Path) -> None:
    """Check, without decoding the pixels, that ``path`` is an image file Pillow can read (its header, and for PNG
    its chunk checksums); a file cut short is only found when decoded, by :func:`read_image`.

    Raises:
        ImageError: missing, a folder, or not a recognised image.
    """
    path = _existing_file(path)
    try:
        with Image.open(path) as opened:
            opened.verify()
    except UnidentifiedImageError:
        raise ImageError(f"cannot read image {path}: format not recognised (corrupt or not an image)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"cannot read image {path}: {error} (the file is corrupt or truncated)") from None


def _sixteen_to_eight(image: Image.Image, path: Path) -> Image.Image:
    """Convert a 16-bit (or 32-bit integer holding 16-bit values) grayscale image to 8 bit by its high byte."""
    values = np.asarray(image).astype(np.int64)
    if values.min(initial=0) < 0 or values.max(initial=0) > 65535:
        raise ImageError(f"cannot read image {path}: 32-bit integer values outside 0..65535; convert it to 8 bit")
    return Image.fromarray((values >> 8).astype(np.uint8), mode="L")


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB.

    Args:
        path: image file (any format Pillow reads).

    Returns:
        ``(H, W, 3)`` uint8 RGB array, after the EXIF orientation; see the module docstring for how grayscale,
        palette, 16-bit, CMYK and transparent images are converted.

    Raises:
        ImageError: the file is missing, not an image, corrupt, truncated, or floating point.

    Example:
        >>> read_image("cat.jpg").shape  # doctest: +SKIP
        (375, 500, 3)
    """
    path = Path(path)
    image = _open(path)
    if image.mode == "F":
        raise ImageError(f"cannot read image {path}: floating-point images are not supported; convert it to 8 bit")
    if image.mode.startswith("I"):
        image = _sixteen_to_eight(image, path)
    if "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        image = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
    try:
        return np.ascontiguousarray(np.asarray(image.convert("RGB")))
    except ValueError as error:
        raise ImageError(f"cannot read image {path}: mode {image.mode} cannot be converted to RGB ({error})") from None


def read_label(path: str | Path, num_classes: int, reduce_zero_label: bool, *,
               ignore_values: tuple[int, ...] | None = None, ignore_index: int | None = None) -> np.ndarray:
    """Read a label map (single-channel PNG or TIFF of class indices) and map it to training indices.

    With ``reduce_zero_label`` (PASCAL Context 59) raw 0 (background) becomes 255 (ignore) and raw ``c`` becomes
    ``c - 1``, so raw values ``0..num_classes`` are valid; without it (PASCAL Context 60) values ``0..num_classes-1``
    are kept. 255 is always ``ignore`` for the 8-bit benchmarks. Datasets of more than 255 classes (PASCAL Context
    459, ADE20K-847: 16-bit TIFFs) name their own raw ignore values and get a uint16 map whose ignore is
    ``ignore_index`` (65535). The EXIF orientation is not applied (as mmsegmentation's label loader).

    Args:
        path: label PNG or TIFF (mode ``L``, ``P`` or 16-bit grayscale), values are class indices.
        num_classes: number of classes after the mapping.
        reduce_zero_label: map 0 to 255 and ``c`` to ``c - 1``.
        ignore_values: raw values that mean ignore (default: 255; 65535 for more than 255 classes, whose 255 is a
            class).
        ignore_index: the value ignored pixels get (default: 255; 65535 for more than 255 classes).

    Returns:
        ``(H, W)`` array of class indices in ``0..num_classes-1`` or ``ignore_index``: uint8, or uint16 when
        ``ignore_index`` exceeds 255.

    Raises:
        DataError: the file cannot be read, has several channels, or holds values outside the class range.

    Example:
        >>> read_label("2008_000002.png", num_classes=59, reduce_zero_label=True).dtype  # doctest: +SKIP
        dtype('uint8')
    """
    path = Path(path)
    try:
        image = _open(path, exif=False)
    except ImageError as error:
        raise DataError(f"label map: {error}") from None
    if image.mode not in ("L", "P", "I", "I;16", "I;16B", "I;16L", "I;16N"):
        raise DataError(
            f"label map {path} has mode {image.mode} ({len(image.getbands())} channels); expected a single-channel "
            "PNG or TIFF of class indices (mode L, P or 16-bit)"
        )
    wide = num_classes > 255
    ignore_values = ignore_values if ignore_values is not None else ((WIDE_IGNORE_INDEX,) if wide else (IGNORE_INDEX,))
    ignore_index = ignore_index if ignore_index is not None else (WIDE_IGNORE_INDEX if wide else IGNORE_INDEX)
    raw = np.asarray(image).astype(np.int64)
    top = num_classes if reduce_zero_label else num_classes - 1
    ignored = np.isin(raw, np.asarray(ignore_values, np.int64))
    bad = np.unique(raw[((raw < 0) | (raw > top)) & ~ignored])
    if bad.size:
        shown = ", ".join(str(v) for v in bad[:10]) + (", ..." if bad.size > 10 else "")
        ignore = " and ".join(str(v) for v in ignore_values)
        raise DataError(
            f"label map {path} has values [{shown}] outside the expected range 0..{top} (and {ignore} = ignore) "
            f"for {num_classes} classes{' with reduce_zero_label' if reduce_zero_label else ''}"
        )
    if reduce_zero_label:
        raw = np.where((raw == 0) | ignored, ignore_index, raw - 1)
    else:
        raw = np.where(ignored, ignore_index, raw)
    return np.ascontiguousarray(raw.astype(np.uint8 if ignore_index <= 255 else np.uint16))


def list_images(folder: str | Path) -> list[Path]:
    """List the image files directly inside a folder, sorted by name.

    Args:
        folder: directory to list (not recursive; hidden files skipped).

    Returns:
        Sorted paths whose extension (any case) is one of ``IMAGE_EXTENSIONS``.

    Raises:
        DataError: the folder does not exist, is not a directory, or holds no images.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"image folder {folder} {'is not a directory' if folder.exists() else 'does not exist'}")
    paths = sorted(
        p for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )
    if not paths:
        raise DataError(f"image folder {folder} holds no images (looked for {', '.join(IMAGE_EXTENSIONS)})")
    return paths


def normalise(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """CLIP-normalise uint8 RGB images: ``(x / 255 - mean) / std`` per channel.

    Args:
        images: uint8 ``(H, W, 3)`` or ``(B, H, W, 3)`` array or tensor (a tensor keeps its device).

    Returns:
        float32 tensor ``(B, 3, H, W)`` (``B = 1`` for a single image).

    Raises:
        ValueError: not uint8, or not 3 channels last.

    Example:
        >>> normalise(np.zeros((4, 6, 3), np.uint8)).shape
        torch.Size([1, 3, 4, 6])
    """
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim not in (3, 4) or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 (H, W, 3) or (B, H, W, 3) images, got {images.dtype} {tuple(images.shape)}")
    images = images.reshape(-1, *images.shape[-3:]).permute(0, 3, 1, 2).float().div_(255)  # (B, 3, H, W)
    mean = torch.tensor(CLIP_MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=images.device).view(1, 3, 1, 1)
    return images.sub_(mean).div_(std).contiguous()


class ImageFolderDataset(Dataset):
    """Unlabelled images given by path, for ``segment``; ids are file stems.

    Args:
        paths: image files.

    Raises:
        ImageError: a path is not an existing file.
        DataError: no paths, or two paths share a stem (their outputs would collide).
    """

    def __init__(self, paths: Sequence[str | Path]):
        self.paths = [Path(p) for p in paths]
        if not self.paths:
            raise DataError("no images given")
        folders = [p for p in self.paths if p.is_dir()]
        if folders:
            raise ImageError(f"{folders[0]} is a folder, not an image file; pass the image files inside it (e.g. "
                             f"{folders[0]}/*.jpg)")
        missing = [p for p in self.paths if not p.is_file()]
        if missing:
            raise ImageError(f"{len(missing)} image file(s) do not exist: {', '.join(map(str, missing[:5]))}")
        seen: dict[str, Path] = {}
        for path in self.paths:
            if path.stem in seen:
                raise DataError(f"{seen[path.stem]} and {path} have the same name stem; their outputs would collide")
            seen[path.stem] = path
        self.ids = list(seen)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        """Return ``{"id": str, "image": (H, W, 3) uint8 RGB}``.

        Raises:
            ImageError: the image cannot be read.
        """
        return {"id": self.ids[index], "image": read_image(self.paths[index])}


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """Collate dataset samples into lists per key (images of different sizes are not stacked).

    Args:
        samples: dicts with the same keys (``id``, ``image``, optionally ``label``).

    Returns:
        ``{key: [value of each sample]}``.

    Example:
        >>> collate_samples([{"id": "a"}, {"id": "b"}])
        {'id': ['a', 'b']}
    """
    return {key: [sample[key] for sample in samples] for key in samples[0]}
