from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from segclip.data.images import (
    CLIP_MEAN,
    CLIP_STD,
    list_images,
    normalise,
    read_image,
    read_label,
)
from segclip.errors import DataError, ImageError, SegclipError


@pytest.fixture
def rgb() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(6, 8, 3), dtype=np.uint8)


def test_rgb_png_roundtrip(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_grayscale_becomes_three_equal_channels(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb[..., 0]).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (6, 8, 3)
    for channel in range(3):
        np.testing.assert_array_equal(out[..., channel], rgb[..., 0])


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [0, 0, 0, 128]]], np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[0, 1], [255, 255, 255])
    assert np.all(np.abs(out[0, 2].astype(int) - 127) <= 1)


def test_palette_with_and_without_transparency(tmp_path: Path) -> None:
    image = Image.new("P", (2, 1))
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.putpixel((1, 0), 1)
    image.save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png")[0], [[255, 0, 0], [0, 0, 255]])
    image.save(tmp_path / "pt.png", transparency=0)
    np.testing.assert_array_equal(read_image(tmp_path / "pt.png")[0], [[255, 255, 255], [0, 0, 255]])


def test_16bit_grayscale_keeps_high_byte(tmp_path: Path) -> None:
    values = np.array([[0, 257 * 7, 256 * 200 + 255, 65535]], np.uint16)
    cv2.imwrite(str(tmp_path / "g16.png"), values)
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    np.testing.assert_array_equal(read_image(tmp_path / "g16.png")[0, :, 0], [0, 7, 200, 255])


def test_16bit_rgb(tmp_path: Path) -> None:
    values = np.random.default_rng(1).integers(0, 65536, size=(3, 4, 3), dtype=np.uint16)
    cv2.imwrite(str(tmp_path / "c16.png"), values)  # cv2 writes BGR
    np.testing.assert_array_equal(read_image(tmp_path / "c16.png"), (values[..., ::-1] >> 8).astype(np.uint8))


def test_cmyk(tmp_path: Path) -> None:
    Image.new("CMYK", (4, 3), (255, 0, 0, 0)).save(tmp_path / "c.tif")
    out = read_image(tmp_path / "c.tif")
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out[0, 0], [0, 255, 255])


def test_exif_orientation_is_applied(tmp_path: Path, rgb: np.ndarray) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(tmp_path / "r.png", exif=exif)
    np.testing.assert_array_equal(read_image(tmp_path / "r.png"), np.rot90(rgb, k=-1))


def test_float_image_is_refused(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((2, 2), np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageError, match="floating-point"):
        read_image(tmp_path / "f.tif")


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_file(tmp_path: Path, rgb: np.ndarray, suffix: str) -> None:
    big = np.kron(rgb, np.ones((20, 20, 1), np.uint8))
    Image.fromarray(big).save(tmp_path / f"full{suffix}")
    data = (tmp_path / f"full{suffix}").read_bytes()
    (tmp_path / f"cut{suffix}").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match=f"cut{suffix}.*(truncated|corrupt)"):
        read_image(tmp_path / f"cut{suffix}")


def test_corrupt_missing_and_directory(tmp_path: Path) -> None:
    (tmp_path / "junk.jpg").write_bytes(b"not an image at all" * 10)
    with pytest.raises(ImageError, match="junk.jpg.*corrupt or not an image"):
        read_image(tmp_path / "junk.jpg")
    with pytest.raises(ImageError, match="nope.png: the file does not exist"):
        read_image(tmp_path / "nope.png")
    with pytest.raises(ImageError, match="is a folder, not an image file"):
        read_image(tmp_path)
    assert issubclass(ImageError, SegclipError) and issubclass(DataError, SegclipError)


def _label(tmp_path: Path, values: np.ndarray, mode: str = "L") -> Path:
    Image.fromarray(values.astype(np.uint8), mode=mode).save(tmp_path / "l.png")
    return tmp_path / "l.png"


def test_label_reduce_zero_label(tmp_path: Path) -> None:
    path = _label(tmp_path, np.array([[0, 1, 2], [59, 255, 30]]))
    out = read_label(path, num_classes=59, reduce_zero_label=True)
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, [[255, 0, 1], [58, 255, 29]])
    kept = read_label(path, num_classes=60, reduce_zero_label=False)
    np.testing.assert_array_equal(kept, [[0, 1, 2], [59, 255, 30]])


def test_label_palette_mode_reads_indices(tmp_path: Path) -> None:
    values = np.array([[0, 3], [5, 255]], np.uint8)
    image = Image.fromarray(values, mode="L").convert("P")
    image.save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    np.testing.assert_array_equal(read_label(tmp_path / "p.png", 59, True), [[255, 2], [4, 255]])


@pytest.mark.parametrize(("num_classes", "reduce", "bad"), [(59, True, [60, 200]), (60, False, [60, 254])])
def test_label_out_of_range(tmp_path: Path, num_classes: int, reduce: bool, bad: list[int]) -> None:
    path = _label(tmp_path, np.array([[0, bad[0]], [bad[1], 255]]))
    message = rf"l\.png has values \[{bad[0]}, {bad[1]}\] outside the expected range 0\.\.59"
    with pytest.raises(DataError, match=message):
        read_label(path, num_classes=num_classes, reduce_zero_label=reduce)


def test_label_with_colour_channels_is_refused(tmp_path: Path, rgb: np.ndarray) -> None:
    Image.fromarray(rgb).save(tmp_path / "c.png")
    with pytest.raises(DataError, match="single-channel"):
        read_label(tmp_path / "c.png", 59, True)
    with pytest.raises(DataError, match="label map.*does not exist"):
        read_label(tmp_path / "missing.png", 59, True)


def test_list_images(tmp_path: Path, rgb: np.ndarray) -> None:
    for name in ("b.PNG", "a.jpg", "c.txt", ".hidden.jpg"):
        Image.fromarray(rgb).save(tmp_path / name, format="PNG")
    (tmp_path / "sub.jpg").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG"]
    with pytest.raises(DataError, match="does not exist"):
        list_images(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        list_images(tmp_path / "empty")


def test_normalise(rgb: np.ndarray) -> None:
    out = normalise(rgb)
    assert out.shape == (1, 3, 6, 8) and out.dtype == torch.float32
    expected = (rgb / 255.0 - np.array(CLIP_MEAN)) / np.array(CLIP_STD)
    np.testing.assert_allclose(out[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    batch = normalise(torch.from_numpy(np.stack([rgb, rgb[::-1].copy()])))
    assert batch.shape == (2, 3, 6, 8)
    torch.testing.assert_close(batch[0], out[0])
    with pytest.raises(ValueError, match="uint8"):
        normalise(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="uint8"):
        normalise(rgb[..., :2])
