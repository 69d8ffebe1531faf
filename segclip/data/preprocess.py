"""CLIP's own whole-image preprocessing: resize the short side to S (bicubic), centre-crop S x S, normalise."""
from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from segclip.data.images import normalise


def centre_crop(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the short side to ``size`` (bicubic, as CLIP) and centre-crop: (H, W, 3) uint8 -> (size, size, 3)."""
    height, width = image.shape[:2]
    factor = size / min(height, width)
    new_w, new_h = max(size, round(width * factor)), max(size, round(height * factor))
    resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return resized[top:top + size, left:left + size]


def clip_batch(images: list[np.ndarray], size: int) -> torch.Tensor:
    """A list of uint8 RGB images of any sizes -> (B, 3, size, size) CLIP-normalised float32."""
    return normalise(np.stack([centre_crop(image, size) for image in images]))
