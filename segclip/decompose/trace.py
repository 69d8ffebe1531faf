"""The exact neuron-head and token-head decomposition of one batched forward pass (method.md, section 2).

    out = sum_n sum_h alpha[n, h] w[n, h] + sum_h beta[h] + b_O          (pairs)
    out = sum_h sum_i r^h_i                                              (token-heads)

A :class:`Trace` holds the per-image quantities (alpha, attention, tokens, neurons, token-head contributions);
the per-model quantities (w, beta, b_O) live in :class:`segclip.decompose.pairs.PairDirections`. Nothing of size
N x H x d is formed per image.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from segclip.errors import ModelError

if TYPE_CHECKING:
    from segclip.models.attnpool import AttentionPool

Hook = Callable[[torch.Tensor], "torch.Tensor | None"]
HOOK_POINTS = ("stem", "layer1", "layer2", "layer3", "neurons", "tokens", "attention")


@dataclass
class Trace:
    """Everything the attention pool did for a batch of B images.

    Attributes:
        neurons: (B, N, h, w) layer4 output (post-ReLU): the neuron maps Z_n.
        tokens: (B, K+1, N) tokens z' (class token first, positional embedding added, registers zeroed if any).
        attention: (B, H, K+1) class-token attention a^h_i over the kept tokens.
        pair_scalars: (B, N, H) alpha[n, h] = sum_i a^h_i z'_i[n].
        output: (B, d) the image embedding (not normalised); equals ``encode_image`` without interventions.
        token_heads: (B, K+1, H, d) r^h_i, or None when not requested.
        registers: indices of the register neurons zeroed, or None.
    """

    neurons: torch.Tensor
    tokens: torch.Tensor
    attention: torch.Tensor
    pair_scalars: torch.Tensor
    output: torch.Tensor
    token_heads: torch.Tensor | None = None
    registers: torch.Tensor | None = None

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.neurons.shape[-2:])

    def __len__(self) -> int:
        return self.output.shape[0]


def check_images(images: torch.Tensor, image_size: int, interpolate_positions: bool) -> None:
    """Raise :class:`ModelError` unless ``images`` is a finite (B, 3, S, S) batch of the model's size."""
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ModelError(f"Expected a batch of images shaped (B, 3, H, W); got {shape}.")
    if images.shape[1] != 3:
        raise ModelError(
            f"Expected 3 (RGB) channels, got {images.shape[1]}: convert grayscale or RGBA images to RGB first "
            "(segclip.data.images.read_image does).")
    size = tuple(images.shape[-2:])
    if not interpolate_positions and size != (image_size, image_size):
        raise ModelError(
            f"Images are {size[0]}x{size[1]} but the model's native input is {image_size}x{image_size}. Resize or "
            "crop them (the sliding window does), or enable positional-embedding interpolation.")
    if interpolate_positions and (size[0] % 32 or size[1] % 32):
        raise ModelError(f"Image sides must be multiples of 32 for a ResNet; got {size[0]}x{size[1]}.")
    if not torch.isfinite(images).all():
        raise ModelError("Images contain NaN or inf values; check the input pixels and normalisation.")


def run_hook(hooks: Mapping[str, Hook] | None, name: str, value: torch.Tensor) -> torch.Tensor:
    """Apply the hook registered at ``name`` (if any); a hook may return a replacement tensor or None."""
    if hooks and name in hooks:
        replaced = hooks[name](value)
        if replaced is not None:
            return replaced
    return value


def backbone_neurons(visual: torch.nn.Module, images: torch.Tensor,
                     hooks: Mapping[str, Hook] | None = None) -> torch.Tensor:
    """Layer4 activations of open_clip's ``ModifiedResNet``: (B, 3, S, S) -> (B, N, S/32, S/32)."""
    x = images.to(visual.conv1.weight.dtype)
    x = run_hook(hooks, "stem", visual.stem(x))
    x = run_hook(hooks, "layer1", visual.layer1(x))
    x = run_hook(hooks, "layer2", visual.layer2(x))
    x = run_hook(hooks, "layer3", visual.layer3(x))
    return run_hook(hooks, "neurons", visual.layer4(x))


def trace_pool(pool: AttentionPool, neurons: torch.Tensor, *, token_heads: bool = False,
               registers: torch.Tensor | None = None, hooks: Mapping[str, Hook] | None = None) -> Trace:
    """Decompose the attention pool's output for a batch of layer4 activations.

    Args:
        pool: the re-implemented attention pool.
        neurons: (B, N, h, w) layer4 output.
        token_heads: also return the token-head contributions r^h_i, (B, K+1, H, d).
        registers: optional (R,) neuron indices for the register intervention (method.md section 6): the
            original last token is kept as an extra key/value, the registers are zeroed in all K+1 tokens, the
            softmax runs over K+2 keys and the extra column is dropped without renormalising.
        hooks: optional callables at ``tokens`` and ``attention``.

    Returns:
        The :class:`Trace` (its ``output`` excludes the dropped extra token under the intervention).
    """
    tokens = pool.tokens(neurons)
    extra = None
    if registers is not None:
        extra = tokens[:, -1].clone()
        tokens = tokens.clone()
        tokens[:, :, registers] = 0
    tokens = run_hook(hooks, "tokens", tokens)
    attention = pool.class_attention(tokens, extra_key=extra)
    if extra is not None:
        attention = attention[..., :-1]
    attention = run_hook(hooks, "attention", attention)
    pair_scalars = torch.einsum("bht,btn->bnh", attention, tokens)  # one bmm: (B,H,K+1) x (B,K+1,N)
    mass = None if extra is None else attention.sum(-1)
    output = pool.output_from_pair_scalars(pair_scalars, mass)
    heads = token_head_contributions(pool, tokens, attention) if token_heads else None
    return Trace(neurons=neurons, tokens=tokens, attention=attention, pair_scalars=pair_scalars, output=output,
                 token_heads=heads, registers=registers)


def token_head_contributions(pool: AttentionPool, tokens: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """r^h_i = a^h_i W_O^h (W_v^h z'_i + b_v^h) + b_O / ((K+1) H).

    Args:
        pool: the attention pool.
        tokens: (B, T, N).
        attention: (B, H, T).

    Returns:
        (B, T, H, d); summed over T and H it is the pool's output (when the attention rows sum to one).
    """
    values = pool.project(tokens, "v")  # (B, T, H, hd)
    values = values * attention.transpose(1, 2)[..., None]
    w_o = pool.pool.c_proj.weight.view(pool.embed_dim, pool.num_heads, pool.head_dim)
    contributions = torch.einsum("bthc,dhc->bthd", values, w_o)
    return contributions.add_(pool.pool.c_proj.bias / (tokens.shape[1] * pool.num_heads))
