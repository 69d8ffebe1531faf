"""The exact neuron-head and token-head decomposition of one batched forward pass (docs/method.md §2).

    out = sum_n sum_h alpha[n, h] w[n, h] + sum_h beta[h] + b_O          (pairs)
    out = sum_h sum_i r^h_i                                              (token-heads)

A :class:`Trace` holds the per-image quantities (alpha, attention, tokens, neurons, token-head contributions);
the per-model quantities (w, beta, b_O) live in :class:`segclip.core.pairs.PairDirections`. Nothing of size
N x H x d is formed per image.

Named hook points (TransformerLens style) let a caller read or replace any intermediate: a hook is a callable
taking the tensor and returning a replacement or None. An unknown name is an error that lists the valid ones.
Interventions are sets of hooks: :class:`RegisterIntervention` is the paper's register-neuron intervention.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch

from segclip.config import ShortRepr
from segclip.core.attnpool import AttentionPool
from segclip.errors import ConfigError, ModelError

Hook = Callable[[torch.Tensor], "torch.Tensor | None"]
HookSpec = Mapping[str, "Hook | Sequence[Hook]"]

HOOK_POINTS: dict[str, str] = {
    "stem": "(B, C, S/4, S/4) output of the stem",
    "layer1": "(B, C, S/4, S/4) output of layer1",
    "layer2": "(B, C, S/8, S/8) output of layer2",
    "layer3": "(B, C, S/16, S/16) output of layer3",
    "neurons": "(B, N, h, w) layer4 output (post-ReLU): the neuron maps Z_n",
    "activations": "(B, K+1, N) token activations z before the positional embedding, class token (mean) first",
    "tokens": "(B, K+1, N) tokens z' = z + P entering the attention",
    "extra_keys": "called with the unmodified tokens z + P (B, K+1, N); returns (B, E, N) extra key/value tokens "
                  "appended for the softmax and dropped after it, without renormalising",
    "attention": "(B, H, K+1) class-token attention over the kept tokens",
}


def check_hooks(hooks: HookSpec | None) -> dict[str, tuple[Hook, ...]]:
    """Validate hook names and normalise each entry to a tuple of callables.

    Raises:
        ConfigError: an unknown hook point (the message lists the valid ones) or a value that is not callable.

    Example:
        >>> check_hooks({"neuron": print})
        Traceback (most recent call last):
        ...
        segclip.errors.ConfigError: Unknown hook point 'neuron'. Valid hook points: stem, layer1, layer2, layer3, \
neurons, activations, tokens, extra_keys, attention.
    """
    checked: dict[str, tuple[Hook, ...]] = {}
    for name, value in (hooks or {}).items():
        if name not in HOOK_POINTS:
            raise ConfigError(f"Unknown hook point '{name}'. Valid hook points: {', '.join(HOOK_POINTS)}.")
        fns = (value,) if callable(value) else tuple(value)
        if not all(callable(fn) for fn in fns):
            raise ConfigError(f"The hook at '{name}' must be a callable or a list of callables.")
        checked[name] = fns
    return checked


def merge_hooks(*specs: HookSpec | None) -> dict[str, tuple[Hook, ...]]:
    """Several hook sets as one; at a shared point the hooks run in the order given."""
    merged: dict[str, tuple[Hook, ...]] = {}
    for spec in specs:
        for name, fns in check_hooks(spec).items():
            merged[name] = merged.get(name, ()) + fns
    return merged


def run_hooks(hooks: Mapping[str, tuple[Hook, ...]], name: str, value: torch.Tensor) -> torch.Tensor:
    """Apply the hooks registered at ``name`` in order; each may return a replacement tensor or None."""
    for fn in hooks.get(name, ()):
        replaced = fn(value)
        if replaced is not None:
            value = replaced
    return value


@dataclass(frozen=True)
class RegisterIntervention:
    """The register-neuron intervention of paper A.5 / docs/method.md §6.2, as a set of hooks.

    The original last token s = z_K + P_K is appended as an extra key/value token, the register neurons are
    zeroed in all K+1 tokens, the softmax runs over K+2 keys and the extra column is dropped without
    renormalising.

    Args:
        registers: (R,) neuron indices.
        variant: where the neurons are zeroed. ``activations`` (default; the paper and the authors' code): their
            activation z_n in every token, before the positional embedding is added (P stays). ``tokens``
            (segclip 0.1): the whole token entry z_n + P_n.

    Example:
        >>> from segclip.models import load_model
        >>> model = load_model()
        >>> trace = model.trace(torch.zeros(1, 3, 192, 192), hooks=RegisterIntervention([3, 5]).hooks())
        >>> float(trace.tokens[0, 1, 3]) == float(model.pool.positional_embedding(6, 6)[1, 3])
        True
    """

    registers: Sequence[int] | torch.Tensor
    variant: str = "activations"

    VARIANTS = ("activations", "tokens")

    def __post_init__(self) -> None:
        if self.variant not in self.VARIANTS:
            raise ConfigError(f"Unknown register variant '{self.variant}'; use one of {', '.join(self.VARIANTS)}.")

    def _zero(self, values: torch.Tensor) -> torch.Tensor:
        index = torch.as_tensor(self.registers, dtype=torch.long, device=values.device)
        zeroed = values.clone()
        zeroed[:, :, index] = 0
        return zeroed

    def hooks(self) -> dict[str, Hook]:
        """``{"activations" or "tokens": zero the registers, "extra_keys": the original last token}``."""
        return {self.variant: self._zero, "extra_keys": lambda tokens: tokens[:, -1:].clone()}

    def to_dict(self) -> dict[str, object]:
        return {"registers": torch.as_tensor(self.registers).tolist(), "variant": self.variant,
                "zeroed": "activation z_n before P is added" if self.variant == "activations" else "z_n + P_n"}


@dataclass
class Trace(ShortRepr):
    """Everything the attention pool did for a batch of B images.

    Attributes:
        neurons: (B, N, h, w) layer4 output (post-ReLU): the neuron maps Z_n.
        tokens: (B, K+1, N) tokens z' (class token first, positional embedding added, interventions applied).
        attention: (B, H, K+1) class-token attention a^h_i over the kept tokens.
        pair_scalars: (B, N, H) alpha[n, h] = sum_i a^h_i z'_i[n].
        output: (B, d) the image embedding (not normalised); equals ``encode_image`` without interventions.
        token_heads: (B, K+1, H, d) r^h_i, or None when not requested.
        extra_keys: number of extra key tokens whose attention was dropped (1 under the register intervention).
        query: (B, H, hd) the class token's query per head.
        keys: (B, K+1+extra_keys, H, hd) the keys per head (the register search reuses them).
    """

    neurons: torch.Tensor
    tokens: torch.Tensor
    attention: torch.Tensor
    pair_scalars: torch.Tensor
    output: torch.Tensor
    token_heads: torch.Tensor | None = None
    extra_keys: int = 0
    query: torch.Tensor | None = None
    keys: torch.Tensor | None = None

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(self.neurons.shape[-2:])

    def __len__(self) -> int:
        return self.output.shape[0]


def check_images(images: torch.Tensor, image_size: int, interpolate_positions: bool, finite: bool = True) -> None:
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
    if finite and not torch.isfinite(images).all():
        raise ModelError("Images contain NaN or inf values; check the input pixels and normalisation.")


def backbone_neurons(visual: torch.nn.Module, images: torch.Tensor,
                     hooks: Mapping[str, tuple[Hook, ...]] | None = None) -> torch.Tensor:
    """Layer4 activations of open_clip's ``ModifiedResNet``: (B, 3, S, S) -> (B, N, S/32, S/32)."""
    hooks = hooks or {}
    x = images.to(visual.conv1.weight.dtype)
    x = run_hooks(hooks, "stem", visual.stem(x))
    x = run_hooks(hooks, "layer1", visual.layer1(x))
    x = run_hooks(hooks, "layer2", visual.layer2(x))
    x = run_hooks(hooks, "layer3", visual.layer3(x))
    return run_hooks(hooks, "neurons", visual.layer4(x))


def trace_pool(pool: AttentionPool, neurons: torch.Tensor, *, token_heads: bool = False,
               hooks: HookSpec | None = None) -> Trace:
    """Decompose the attention pool's output for a batch of layer4 activations.

    Args:
        pool: the re-implemented attention pool.
        neurons: (B, N, h, w) layer4 output.
        token_heads: also return the token-head contributions r^h_i, (B, K+1, H, d).
        hooks: callables at ``activations``, ``tokens``, ``extra_keys`` and ``attention`` (the earlier points
            belong to the backbone); e.g. :meth:`RegisterIntervention.hooks`.

    Returns:
        The :class:`Trace` (its ``output`` excludes the dropped extra tokens). Gradients flow through it when the
        caller's grad mode allows.
    """
    hooks = check_hooks(hooks)
    grid = tuple(neurons.shape[-2:])
    activations = pool.activations(neurons)  # (B, N, h, w) -> (B, K+1, N)
    hooked = run_hooks(hooks, "activations", activations)
    tokens = run_hooks(hooks, "tokens", pool.add_positions(hooked, grid))
    extra = None
    if "extra_keys" in hooks:
        extra = run_hooks(hooks, "extra_keys", pool.add_positions(activations, grid))
    query, keys = pool.query_keys(tokens, extra_keys=extra)
    attention = pool.attention(query, keys)
    extras = 0 if extra is None else extra.shape[1]
    if extras:
        attention = attention[..., :-extras]  # dropped without renormalising
    attention = run_hooks(hooks, "attention", attention)
    pair_scalars = torch.einsum("bht,btn->bnh", attention, tokens)  # one bmm: (B,H,K+1) x (B,K+1,N)
    mass = attention.sum(-1) if extras else None
    output = pool.output_from_pair_scalars(pair_scalars, mass)
    heads = token_head_contributions(pool, tokens, attention) if token_heads else None
    return Trace(neurons=neurons, tokens=tokens, attention=attention, pair_scalars=pair_scalars, output=output,
                 token_heads=heads, extra_keys=extras, query=query, keys=keys)


def token_head_contributions(pool: AttentionPool, tokens: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """r^h_i = a^h_i W_O^h (W_v^h z'_i + b_v^h) + b_O / ((K+1) H).

    Args:
        pool: the attention pool.
        tokens: (B, T, N).
        attention: (B, H, T).

    Returns:
        (B, T, H, d); summed over T and H it is the pool's output (when the attention rows sum to one).
    """
    heads = pool.heads
    values = pool.project(tokens, "v") * attention.transpose(1, 2)[..., None]  # (B, T, H, hd)
    contributions = torch.einsum("bthc,hdc->bthd", values, heads.w_o)
    return contributions.add_(heads.bias_share(tokens.shape[1]))


def iter_hook_points() -> Iterable[tuple[str, str]]:
    """(name, description) of every hook point, in forward order."""
    return HOOK_POINTS.items()
