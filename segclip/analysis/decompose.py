"""``segclip decompose``: the exact identity on a few images, and the pairs adding most to each word's similarity."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from segclip.config import Config, ShortRepr, option
from segclip.data.images import read_image
from segclip.data.preprocess import clip_batch
from segclip.errors import ConfigError
from segclip.models.loading import CLIPResNet, ModelSource, resolve_model
from segclip.models.text import encode_classes
from segclip.paths import example_image_path


@dataclass(frozen=True)
class DecomposeConfig(Config):
    """Options of ``segclip decompose``."""

    images: tuple[Path, ...] = option((), positional=True, help="image files (default: the bundled example).")
    texts: tuple[str, ...] = option((), aliases=("--words",),
                                    help="comma-separated words or phrases (default: the bundled model's classes, or "
                                         "'dog,cat,car').")
    top: int = option(5, help="pairs listed per word (default: 5).")

    def __post_init__(self) -> None:
        super().__post_init__()  # field types (segclip.config.Config)
        if self.top < 1:
            raise ConfigError("--top must be at least 1.")


@dataclass
class PairShare:
    """One pair's share of an image-word cosine: alpha[n, h] (w[n, h] . t) / |out|."""

    neuron: int
    head: int
    share: float
    alpha: float
    cosine: float


@dataclass
class DecomposeResult(ShortRepr):
    """The identity errors and, per image and word, the image-text cosine and the top pairs.

    Attributes:
        header: model description; errors: max |error| of the pair and token-head sums against ``encode_image``
            and the embedding's scale; images: per image name, per word, ``(cosine, [PairShare, ...])``.
    """

    header: str
    errors: dict[str, float]
    images: dict[str, dict[str, tuple[float, list[PairShare]]]]

    def summary(self) -> str:
        lines = [self.header,
                 f"identity: |sum of pairs + biases - encode_image| = {self.errors['pairs']:.2e}, "
                 f"|sum of token-heads - encode_image| = {self.errors['token_heads']:.2e} (max |embedding| "
                 f"{self.errors['scale']:.2e})"]
        for name, words in self.images.items():
            lines.append(f"\n{name}")
            for word, (cosine, shares) in words.items():
                lines.append(f"  '{word}': image-text cosine {cosine:+.4f}; top pairs (neuron, head): share, alpha, "
                             "cos(w, t)")
                lines += [f"    ({p.neuron:4d}, {p.head:2d}): {p.share:+.4f}  alpha {p.alpha:+.3f}  cos "
                          f"{p.cosine:+.3f}" for p in shares]
        return "\n".join(lines) + "\n"


def identity_errors(model: CLIPResNet, images: torch.Tensor) -> dict[str, float]:
    """Max |error| of the pair and token-head sums against open_clip's ``encode_image``, and its scale.

    Args:
        model: the model.
        images: (B, 3, S, S) normalised images.

    Returns:
        ``{"pairs": ..., "token_heads": ..., "scale": max |encode_image|}``.
    """
    with torch.inference_mode():
        reference = model.clip.encode_image(images.to(model.device, model.dtype))
        trace = model.trace(images, token_heads=True)
        pairs = model.pairs
        summed = pairs.head_biases().sum(0) + pairs.output_bias()
        for head in range(model.info.heads):
            summed = summed + trace.pair_scalars[:, :, head] @ pairs.head_vectors(head)
        return {"pairs": (summed - reference).abs().max().item(),
                "token_heads": (trace.token_heads.sum((1, 2)) - reference).abs().max().item(),
                "scale": reference.abs().max().item()}


def run_decompose(config: DecomposeConfig, model: ModelSource) -> DecomposeResult:
    """Decompose images into neuron-head pairs: the identity check and the top pairs per word.

    Args:
        config: the options (:class:`DecomposeConfig`).
        model: the loaded model, or a loader called once the inputs are checked.

    Returns:
        The :class:`DecomposeResult` (``summary()`` is what the command prints).

    Raises:
        ImageError: an unreadable image.

    Example:
        >>> from segclip.models import load_model
        >>> result = run_decompose(DecomposeConfig(texts=("ball",), top=2), load_model())
        >>> result.errors["pairs"] < 1e-3 * result.errors["scale"]
        True
    """
    paths = list(config.images) or [example_image_path()]
    pixels = [read_image(path) for path in paths]
    model = resolve_model(model)
    info = model.info
    images = clip_batch(pixels, info.image_size)
    words = list(config.texts) or list((info.classes or ("dog", "cat", "car"))[:4])
    texts = encode_classes(model, words, "openai").to(model.dtype)
    errors = identity_errors(model, images)
    with torch.inference_mode():
        trace = model.trace(images)
        dots = model.pairs.dots(texts)  # (C, N, H)
        cosines = dots / model.pairs.norms()
        out_norm = trace.output.norm(dim=-1)
        found: dict[str, dict[str, tuple[float, list[PairShare]]]] = {}
        for b, path in enumerate(paths):
            found[Path(path).name] = {}
            for c, word in enumerate(words):
                share = trace.pair_scalars[b] * dots[c] / out_norm[b]  # (N, H)
                values, flat = share.flatten().topk(config.top)
                pairs = []
                for value, index in zip(values.tolist(), flat.tolist()):
                    n, h = divmod(index, info.heads)
                    pairs.append(PairShare(n, h, value, trace.pair_scalars[b, n, h].item(), cosines[c, n, h].item()))
                cosine = (trace.output[b] @ texts[c] / out_norm[b]).item()
                found[Path(path).name][word] = (cosine, pairs)
    header = (f"model {info.name} ({info.pretrained}): N={info.neurons} neurons x H={info.heads} heads = "
              f"{info.neurons * info.heads:,} pairs, grid {info.grid}x{info.grid}, d={info.embed_dim}")
    return DecomposeResult(header, errors, found)
