"""A human-readable decomposition of a few images: the exact identity and the top pairs per word."""
from __future__ import annotations

from pathlib import Path

import torch

from segclip.models.loading import CLIPResNet


def example_image_path() -> Path:
    """The bundled example scene (rendered by segclip's synthetic scene generator)."""
    from importlib import resources

    return Path(str(resources.files("segclip") / "assets" / "example.jpg"))


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


def decomposition_report(model: CLIPResNet, images: torch.Tensor, names: list[str], words: list[str],
                         texts: torch.Tensor, top: int) -> list[str]:
    """Lines of text: per image, the identity check and, per word, the pairs adding most to its similarity.

    A pair's share of the image-word cosine is alpha[n, h] (w[n, h] . t) / |out| (t unit-norm).
    """
    info = model.info
    errors = identity_errors(model, images)
    trace = model.trace(images)
    dots = model.pairs.dots(texts.to(model.dtype))  # (C, N, H)
    cosines = dots / model.pairs.norms()
    lines = [f"model {info.name} ({info.pretrained}): N={info.neurons} neurons x H={info.heads} heads = "
             f"{info.neurons * info.heads:,} pairs, grid {info.grid}x{info.grid}, d={info.embed_dim}",
             f"identity: |sum of pairs + biases - encode_image| = {errors['pairs']:.2e}, "
             f"|sum of token-heads - encode_image| = {errors['token_heads']:.2e} (max |embedding| "
             f"{errors['scale']:.2e})"]
    out_norm = trace.output.norm(dim=-1)
    for b, name in enumerate(names):
        lines.append(f"\n{name}")
        for c, word in enumerate(words):
            share = trace.pair_scalars[b] * dots[c] / out_norm[b]  # (N, H)
            values, flat = share.flatten().topk(top)
            cosine = (trace.output[b] @ texts[c].to(model.dtype) / out_norm[b]).item()
            lines.append(f"  '{word}': image-text cosine {cosine:+.4f}; top pairs (neuron, head): share, alpha, "
                         "cos(w, t)")
            for value, index in zip(values.tolist(), flat.tolist()):
                n, h = divmod(index, info.heads)
                lines.append(f"    ({n:4d}, {h:2d}): {value:+.4f}  alpha {trace.pair_scalars[b, n, h].item():+.3f}"
                             f"  cos {cosines[c, n, h].item():+.3f}")
    return lines
