"""What a loaded model is: recorded in every result file and checked against every artifact."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class ModelInfo:
    """What a loaded model is; recorded in every result file.

    Attributes:
        name: model name (``RN50x16``, ``RN50-quickgelu``, ``segclip-tiny``).
        pretrained: the weights source as given (a tag, a file path, ``none``, ``bundled``).
        weights_hash: sha256 of the weights file, or ``random-init:<name>:seed<seed>``.
        image_size: native input size S (images are S x S).
        grid: side of the layer4 grid (S // 32); K = grid**2 spatial tokens.
        neurons: N, channels of layer4.
        heads: H, heads of the attention pool.
        head_dim: channels per head (64 for OpenAI models).
        embed_dim: d, the joint embedding size.
        quick_gelu: whether the text tower uses QuickGELU.
        classes: the class names a bundled model was trained on (empty for open_clip models).
    """

    name: str
    pretrained: str
    weights_hash: str
    image_size: int
    grid: int
    neurons: int
    heads: int
    head_dim: int
    embed_dim: int
    quick_gelu: bool
    classes: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
