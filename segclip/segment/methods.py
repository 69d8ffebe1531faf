"""Segmentation methods reading one shared attention-pool trace (docs/method.md §3, §4, §6).

Every method maps a :class:`~segclip.core.trace.Trace` of B crops to window logits ``(B, C, g, g)``:

- ``neuron-head`` (paper Eq. 6): ``logit_c(i) = (1/k) sum_h L_h,c(i) U_c,h(i)`` with the top-k pairs ``P_c`` by
  ``s[n,h] cos(w[n,h], t_c)``, neuron maps ``Z_n`` (layer4, no positional embedding), head maps
  ``L_h,c(i) = cos(r^h_i, t_c)`` and ``U_c,h(i) = sum_{n:(n,h) in P_c} Z_n(i)`` (one ``(K x N)`` by ``(N x C H)``
  product for all classes; nothing per pair).
- ``neuron-only`` (ablation): ``(1/k) sum_{(n,h) in P_c} Z_n(i) = (1/k) sum_h U_c,h(i)``: Eq. 6 without the head
  maps (the same pairs, each neuron counted once per selected head).
- ``head-only`` (ablation): ``(1/H) sum_h L_h,c(i)``: the paper's "single aggregated" head map, before any pair
  selection (Section 5.1: the per-head maps aggregated over heads).
- ``maskclip``: ``cos(c_proj(v_proj(z_i)), t_c)`` per spatial location, biases kept, no positional embedding.
- ``self-self``: the attention pool with ``A^h = softmax(Q Q^T / sqrt(hd)) + softmax(K K^T / sqrt(hd))`` over all
  K+1 tokens (rows sum to 2), class token dropped, ``cos(out_i, t_c)``.

Methods run under ``torch.inference_mode``. The attention-sink fix (``sink_fix``) replaces the last spatial token
by the mean of its west, north and north-west neighbours, in the neuron maps and in the head contributions before
they are normalised.

Register neurons (docs/method.md §6.2 admits two readings; this is the decision, :class:`~segclip.core.trace.
RegisterIntervention`): zeroing a register neuron zeroes its *activation* z_n in all K+1 tokens before the
positional embedding is added (P stays), as the paper's text and the authors' code do, in the intervention and in
the register search alike; the appended sink copy is the original last token with its own positional embedding,
z_K + P_K (the authors' released path appends it before P is added and crashes on the shape: this is the
resolution). Zeroing the whole token entry z_n + P_n (segclip 0.1) stays available as ``register_variant="tokens"``
and is recorded in results. Register neurons are ranked by the mean |change| of the sink attention (the authors'
``find_registers``), or by its mean decrease (their segmentor, ``register_ranking="signed"``). The intervention
changes the class-token attention, so it affects ``neuron-head`` and ``head-only``; ``maskclip``, ``self-self`` and
``neuron-only`` read only the layer4 neurons (self-self rebuilds its tokens from them), which it leaves alone.
Head maps are computed from the per-head values ``u^h_i = a^h_i (W_v^h z'_i + b_v^h)`` (B, K, H, head_dim) and
the Gram matrices of ``W_O^h``, never from the (B, K+1, H, d) token-head tensor: ``r^h_i = W_O^h u^h_i +
b_O / ((K+1) H)`` is linear in ``u``, so the sink fix and the cosine are exact.

Text recipes (docs/method.md §4.3): the pair methods use the 80 OpenAI templates, centred; ``maskclip`` MaskCLIP's
85, not centred; ``self-self`` the 80 OpenAI templates, not centred (as SCLIP's released code). Centring over the
class set degenerates for small sets (two centred vectors are opposite), so ``centring="auto"`` centres over the
class set when it has at least :data:`CENTRING_MIN_CLASSES` classes and otherwise against a fixed reference
vocabulary (the bundled model's own classes, or the 59 PASCAL Context names) together with the classes.

Signs ``s[n,h]`` come from a calibration artifact (``segclip calibrate``); without one every sign is assumed +1
(the sign is the one thing the weights alone do not fix) and the results say so.
"""
from __future__ import annotations

import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from segclip.core.trace import Trace
from segclip.data.pascal_context import class_names as dataset_class_names
from segclip.errors import ConfigError
from segclip.models.loading import CLIPResNet
from segclip.segment.refine import PAMRConfig
from segclip.models.text import (
    centre,
    check_class_names,
    encode_classes,
    resolve_templates,
)

log = logging.getLogger(__name__)

CENTRING_MIN_CLASSES = 10
CENTRING_CHOICES = ("auto", "classes", "reference", "none")
DEFAULT_K = 20000  # the authors' k for RN50x16 (147,456 pairs); other models keep the same fraction
PAPER_PAIRS = 147456
NO_CALIBRATION = "assumed +1 (no calibration)"


@dataclass(frozen=True)
class TextRecipe:
    """How class embeddings are made.

    Attributes:
        templates: template set name (``openai``: 80, ``maskclip``: 85, ``single``).
        centring: ``auto``, ``classes``, ``reference`` or ``none`` (see the module docstring).
    """

    templates: str
    centring: str

    def to_dict(self) -> dict[str, Any]:
        return {"templates": self.templates, "template_count": len(resolve_templates(self.templates)),
                "centring": self.centring}


def reference_vocabulary(model: CLIPResNet) -> list[str]:
    """Names whose mean embedding small class sets are centred against: the bundled model's classes, or the 59
    PASCAL Context names for open_clip models."""
    return list(model.info.classes) or dataset_class_names("pascal_context", 59)


def class_embeddings(model: CLIPResNet, names: Sequence[str], recipe: TextRecipe) -> tuple[torch.Tensor, str]:
    """Unit class embeddings for a recipe, and a description of the centring actually applied.

    Args:
        model: the model.
        names: C class names.
        recipe: templates and centring.

    Returns:
        ``(C, d)`` float32 embeddings of norm one, and e.g. ``"class set (59 classes)"``.

    Raises:
        ConfigError: bad class names, template set or centring choice.
    """
    names = check_class_names(list(names))
    if recipe.centring not in CENTRING_CHOICES:
        raise ConfigError(f"Unknown centring '{recipe.centring}'; use one of {', '.join(CENTRING_CHOICES)}.")
    texts = encode_classes(model, names, recipe.templates).float()
    mode = recipe.centring
    if mode == "auto":
        mode = "classes" if len(names) >= CENTRING_MIN_CLASSES else "reference"
    if mode == "none":
        return texts, "none"
    if mode == "classes":
        return centre(texts), f"class set ({len(names)} classes)"
    lowered = {name.lower() for name in names}
    extra = [word for word in reference_vocabulary(model) if word.lower() not in lowered]
    reference = torch.cat([texts, encode_classes(model, extra, recipe.templates).float()]) if extra else texts
    log.info("%d classes are centred against a reference vocabulary of %d more words", len(names), len(extra))
    return centre(texts, reference), f"reference vocabulary ({len(names)} classes + {len(extra)} reference words)"


def sink_fix(maps: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Replace the last spatial token by the mean of its west, north and north-west neighbours.

    Args:
        maps: ``(B, K, ...)`` per-token values, tokens in row-major order over ``grid``.
        grid: ``(h, w)`` with ``h, w >= 2``.

    Returns:
        A copy of ``maps`` with token ``K-1`` replaced.

    Example:
        >>> sink_fix(torch.arange(4.).view(1, 4), (2, 2))
        tensor([[0., 1., 2., 1.]])
    """
    height, width = grid
    if height < 2 or width < 2:
        raise ValueError(f"the attention-sink fix needs a grid of at least 2x2, got {height}x{width}")
    last = height * width - 1
    fixed = maps.clone()
    fixed[:, last] = (maps[:, last - 1] + maps[:, last - width] + maps[:, last - width - 1]) / 3
    return fixed


def work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype methods compute and return logits in: the model's, at least float32 (float64 models stay float64)."""
    return torch.promote_types(dtype, torch.float32)


def to_window_logits(per_token: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """``(B, K, C)`` -> ``(B, C, h, w)``, at least float32."""
    return per_token.to(work_dtype(per_token.dtype)).transpose(1, 2).unflatten(-1, grid).contiguous()


def _cosine_logits(features: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """``(B, K, d)`` features and ``(C, d)`` unit texts -> ``(B, K, C)`` cosines."""
    return F.normalize(features.to(texts.dtype), dim=-1) @ texts.T


class SegmentationMethod(ABC):
    """A method: a name, its class embeddings, and ``__call__(trace) -> (B, C, h, w)`` window logits.

    Args:
        model: the model.
        names: C class names.
        recipe: how to make the class embeddings from the names.
        texts: ``(C, d)`` embeddings to use instead (normalised here, not centred); ``recipe`` is then unused.
        texts_centring: with ``texts``, the centring the caller applied to them (recorded in ``params``).

    Raises:
        ConfigError: bad class names, or ``texts`` not matching them.

    Attributes:
        name: the method's name (one of :data:`METHODS`).
        texts: ``(C, d)`` unit class embeddings on the model's device, in the model's dtype (at least float32):
            a float64 model gives float64 logits.
        params: what the method did, for result files (text recipe, centring, k, signs, registers, ...).
    """

    name: str
    uses_registers = False
    refine: PAMRConfig | None = None  # a refinement of the labels' logits (set by build_methods)

    def __init__(self, model: CLIPResNet, names: Sequence[str], recipe: TextRecipe,
                 texts: torch.Tensor | None = None, texts_centring: str | None = None):
        self.model = model
        work = work_dtype(model.dtype)
        if texts is None:
            texts, centring = class_embeddings(model, names, recipe)
            self.params: dict[str, Any] = {"text": {**recipe.to_dict(), "centring_applied": centring}}
        else:
            texts = F.normalize(texts.to(work), dim=-1)
            self.params = {"text": {"templates": "given embeddings",
                                    "centring_applied": texts_centring or "not stated (texts given by the caller)"}}
        self.names = check_class_names(list(names))
        if len(texts) != len(self.names):
            raise ConfigError(f"{len(texts)} text embeddings for {len(self.names)} class names.")
        self.texts = texts.to(model.device, work)

    def __call__(self, trace: Trace) -> torch.Tensor:
        """Window logits ``(B, C, h, w)`` (the model's dtype, at least float32) for a trace of B crops (computed
        without autograd)."""
        with torch.inference_mode():
            return self.window_logits(trace)

    @abstractmethod
    def window_logits(self, trace: Trace) -> torch.Tensor:
        """The method's maps: trace of B crops -> ``(B, C, h, w)`` float32."""


class MaskCLIP(SegmentationMethod):
    """MaskCLIP for CLIP-ResNet: ``cos(c_proj(v_proj(z_i)), t_c)`` per spatial location (docs/method.md §3.2).

    Example:
        >>> from segclip.models import load_model
        >>> model = load_model("RN50", "none")
        >>> method = MaskCLIP(model, ["cat", "dog"], TextRecipe("single", "none"))
        >>> method(model.trace(torch.randn(1, 3, 224, 224))).shape
        torch.Size([1, 2, 7, 7])
    """

    name = "maskclip"

    def __init__(self, model: CLIPResNet, names: Sequence[str], recipe: TextRecipe | None = None,
                 texts: torch.Tensor | None = None, texts_centring: str | None = None):
        super().__init__(model, names, recipe or REGISTRY["maskclip"].recipe, texts, texts_centring)

    def window_logits(self, trace: Trace) -> torch.Tensor:
        pool = self.model.pool.pool
        spatial = trace.neurons.flatten(2).transpose(1, 2)  # (B, N, h, w) -> (B, K, N)
        features = pool.c_proj(pool.v_proj(spatial))  # (B, K, d)
        return to_window_logits(_cosine_logits(features, self.texts), trace.grid)


def self_self_attention(model: CLIPResNet, tokens: torch.Tensor) -> torch.Tensor:
    """``A^h = softmax(Q^h Q^h^T / sqrt(hd)) + softmax(K^h K^h^T / sqrt(hd))``: (B, T, N) tokens -> (B, H, T, T),
    rows summing to 2, in the tokens' dtype (at least float32)."""
    pool = model.pool
    query, key = (pool.project(tokens, which).transpose(1, 2) for which in ("q", "k"))  # (B, H, T, hd)
    scale = 1 / math.sqrt(pool.head_dim)
    work = torch.promote_types(tokens.dtype, torch.float32)
    return sum(((x @ x.transpose(-1, -2)) * scale).to(work).softmax(-1) for x in (query, key))


def self_self_values(model: CLIPResNet, neurons: torch.Tensor) -> torch.Tensor:
    """The per-head mixed values ``(A^h V^h)_i`` of the self-self attention (method.md section 5).

    Args:
        model: the model.
        neurons: ``(B, N, h, w)`` layer4 output.

    Returns:
        ``(B, K+1, H, hd)`` with :func:`self_self_attention` over all K+1 tokens (class token and positional
        embedding included), class token first.
    """
    tokens = model.pool.tokens(neurons)  # (B, K+1, N)
    value = model.pool.project(tokens, "v").transpose(1, 2)  # (B, H, T, hd)
    attention = self_self_attention(model, tokens)
    return (attention.to(value.dtype) @ value).transpose(1, 2)  # (B, H, T, hd) -> (B, T, H, hd)


def self_self_features(model: CLIPResNet, neurons: torch.Tensor) -> torch.Tensor:
    """Self-self attention outputs of the spatial tokens (docs/method.md §3.3).

    Args:
        model: the model.
        neurons: ``(B, N, h, w)`` layer4 output.

    Returns:
        ``(B, K, d)``: ``out_i = sum_h W_O^h (A^h V^h)_i + b_O`` (:func:`self_self_values`), the class token's row
        dropped.
    """
    mixed = self_self_values(model, neurons).flatten(2)  # (B, T, H, hd) -> (B, T, N)
    return model.pool.pool.c_proj(mixed)[:, 1:]


class SelfSelf(SegmentationMethod):
    """Self-self attention in the attention pool (docs/method.md §3.3); reads only the layer4 neurons, so the
    register intervention does not apply to it."""

    name = "self-self"

    def __init__(self, model: CLIPResNet, names: Sequence[str], recipe: TextRecipe | None = None,
                 texts: torch.Tensor | None = None, texts_centring: str | None = None):
        super().__init__(model, names, recipe or REGISTRY["self-self"].recipe, texts, texts_centring)

    def window_logits(self, trace: Trace) -> torch.Tensor:
        features = self_self_features(self.model, trace.neurons)
        return to_window_logits(_cosine_logits(features, self.texts), trace.grid)


def head_maps(model: CLIPResNet, trace: Trace, texts: torch.Tensor) -> torch.Tensor:
    """Per-head maps ``L_h,c(i) = cos(r^h_i, t_c)`` over spatial tokens, with the attention-sink fix on r^h.

    Computed from ``u^h_i = a^h_i v^h_i`` (B, K, H, hd): ``r^h_i . t = u^h_i . (W_O^h^T t) + b_O . t / ((K+1) H)``
    and ``|r^h_i|^2 = u^T G_h u + 2 u . W_O^h^T b_O / ((K+1) H) + |b_O|^2 / ((K+1) H)^2`` with ``G_h = W_O^h^T
    W_O^h``; equal to the cosine of :func:`~segclip.core.trace.token_head_contributions`.

    Args:
        model: the model.
        trace: the trace (its tokens and attention, with the register intervention if it was applied).
        texts: ``(C, d)`` unit class embeddings.

    Returns:
        ``(B, K, C, H)`` float32.
    """
    pool = model.pool
    heads = pool.heads
    values = pool.project(trace.tokens, "v") * trace.attention.transpose(1, 2)[..., None]  # (B, T, H, hd)
    units = sink_fix(values[:, 1:], trace.grid)  # (B, K, H, hd)
    w_o = heads.w_o  # (H, d, hd)
    share = heads.bias_share(trace.tokens.shape[1])  # b_O / ((K+1) H)
    text_proj = torch.einsum("hdc,kd->khc", w_o, texts.to(w_o.dtype))  # (C, H, hd)
    dots = torch.einsum("bihc,khc->bikh", units, text_proj) + (texts.to(w_o.dtype) @ share)[:, None]
    share_proj = torch.einsum("hdc,d->hc", w_o, share)  # (H, hd)
    squared = (torch.einsum("bihc,hce,bihe->bih", units, model.pairs.gram(), units)
               + 2 * (units * share_proj).sum(-1) + share.dot(share))
    return (dots / squared.clamp_min(1e-24).sqrt()[:, :, None]).to(texts.dtype)


def default_k(num_pairs: int) -> int:
    """The paper's share of pairs per class: 20,000 of RN50x16's 147,456 (13.6 %), scaled to ``num_pairs``.

    Example:
        >>> default_k(147456), default_k(65536)
        (20000, 8889)
    """
    return max(1, round(num_pairs * DEFAULT_K / PAPER_PAIRS))


class PairMethod(SegmentationMethod):
    """The neuron-head method (paper Eq. 6) and its two ablations, ``neuron-only`` and ``head-only``.

    Args:
        model: the model.
        names: C class names.
        name: ``neuron-head``, ``neuron-only`` or ``head-only``.
        k: pairs kept per class (clamped to N H); default :func:`default_k` (20,000 for RN50x16).
        signs: ``(N, H)`` pair signs (+-1) from calibration, or None to assume +1.
        sign_source: description of where the signs came from, for results.
        recipe: text recipe.
        texts: ``(C, d)`` embeddings to use instead of the recipe's.

    Raises:
        ConfigError: unknown name, ``k < 1`` or signs of the wrong shape.

    Example:
        >>> from segclip.models import load_model
        >>> model = load_model("RN50", "none")
        >>> method = PairMethod(model, ["cat", "dog"], k=100, texts=torch.randn(2, 1024))
        >>> method(model.trace(torch.randn(1, 3, 224, 224))).shape
        torch.Size([1, 2, 7, 7])
    """

    uses_registers = True

    def __init__(self, model: CLIPResNet, names: Sequence[str], name: str = "neuron-head", *, k: int | None = None,
                 signs: torch.Tensor | None = None, sign_source: str | None = None, recipe: TextRecipe | None = None,
                 texts: torch.Tensor | None = None, texts_centring: str | None = None):
        if name not in PAIR_METHODS:
            raise ConfigError(f"Unknown pair method '{name}'; use one of {', '.join(PAIR_METHODS)}.")
        if k is not None and k < 1:
            raise ConfigError(f"--k must be at least 1, got {k}.")
        super().__init__(model, names, recipe or DEFAULT_RECIPES[name], texts, texts_centring)
        self.name = name
        self.uses_registers = name in REGISTER_METHODS
        pairs = model.pairs
        shape = (pairs.num_neurons, pairs.num_heads)
        self.k = min(k or default_k(shape[0] * shape[1]), shape[0] * shape[1])
        if name == "head-only":
            return
        self.params["k"] = self.k
        scores = pairs.cosines(self.texts)  # (C, N, H)
        if signs is not None:
            if tuple(signs.shape) != shape:
                raise ConfigError(f"Pair signs have shape {tuple(signs.shape)}; this model needs {shape}.")
            scores = scores * signs.to(scores)[None]
        self.params["signs"] = sign_source or ("calibration" if signs is not None else NO_CALIBRATION)
        top = scores.flatten(1).topk(self.k, dim=1)  # (C, k) into N*H, best first
        chosen = top.indices
        self.pair_index, self.pair_scores = chosen, top.values
        mask = torch.zeros_like(scores.flatten(1)).scatter_(1, chosen, 1.0).view(-1, *shape)  # M_c: (C, N, H)
        log.info("%s: %d pairs per class; pairs per head, mean over classes: %s", name, self.k,
                 mask.sum(1).mean(0).round().int().tolist())
        self.selection = mask.permute(1, 0, 2).flatten(1).to(model.dtype).contiguous()  # (N, C H)

    def selected_pairs(self, c: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Class ``c``'s pairs P_c, best first: ``(neurons (k,), heads (k,), scores (k,))``, the scores being
        ``s[n, h] cos(w[n, h], t_c)``.

        Raises:
            ValueError: for ``head-only``, which selects no pairs.
        """
        if self.name == "head-only":
            raise ValueError("head-only selects no pairs")
        heads = self.model.pairs.num_heads
        return self.pair_index[c] // heads, self.pair_index[c] % heads, self.pair_scores[c]

    def neuron_sums(self, trace: Trace) -> torch.Tensor:
        """``U_c,h(i) = sum_{n:(n,h) in P_c} Z_n(i)`` with the sink fix on Z: ``(B, K, C, H)``."""
        grid = trace.grid
        neurons = sink_fix(trace.neurons.flatten(2).transpose(1, 2), grid)  # (B, N, h, w) -> (B, K, N)
        return (neurons @ self.selection).unflatten(-1, (len(self.texts), -1)).to(self.texts.dtype)

    def window_logits(self, trace: Trace) -> torch.Tensor:
        if self.name == "neuron-only":
            per_token = self.neuron_sums(trace).sum(-1) / self.k
        elif self.name == "head-only":
            per_token = head_maps(self.model, trace, self.texts).mean(-1)
        else:
            per_token = (head_maps(self.model, trace, self.texts) * self.neuron_sums(trace)).sum(-1) / self.k
        return to_window_logits(per_token, trace.grid)


@dataclass(frozen=True)
class MethodSpec:
    """One row of the method registry: adding a method is one class and one row.

    Attributes:
        name: the name commands and results use.
        build: ``(model, names, name, recipe, pair_options) -> SegmentationMethod``.
        recipe: the default text recipe (templates, centring).
        uses_registers: whether the method reads the class-token attention, so that the register intervention
            changes it.
        takes_pairs: whether it selects neuron-head pairs (takes ``k`` and the calibrated signs).
        section: where docs/method.md explains it.
    """

    name: str
    build: Callable[..., SegmentationMethod]
    recipe: TextRecipe
    uses_registers: bool
    takes_pairs: bool
    section: str


def _pair_method(model: CLIPResNet, names: Sequence[str], name: str, recipe: TextRecipe, **pair: Any) -> PairMethod:
    return PairMethod(model, names, name, recipe=recipe, **pair)


REGISTRY: dict[str, MethodSpec] = {spec.name: spec for spec in (
    MethodSpec("neuron-head", _pair_method, TextRecipe("openai", "auto"), True, True, "docs/method.md §3.1"),
    MethodSpec("maskclip", lambda model, names, name, recipe, **_: MaskCLIP(model, names, recipe),
               TextRecipe("maskclip", "none"), False, False, "docs/method.md §3.2"),
    MethodSpec("self-self", lambda model, names, name, recipe, **_: SelfSelf(model, names, recipe),
               TextRecipe("openai", "none"), False, False, "docs/method.md §3.3"),
    MethodSpec("neuron-only", _pair_method, TextRecipe("openai", "auto"), False, True, "docs/method.md §3.4"),
    MethodSpec("head-only", _pair_method, TextRecipe("openai", "auto"), True, True, "docs/method.md §3.5"),
)}
METHODS: tuple[str, ...] = tuple(REGISTRY)
PAIR_METHODS = tuple(name for name, spec in REGISTRY.items() if spec.takes_pairs)
REGISTER_METHODS = tuple(name for name, spec in REGISTRY.items() if spec.uses_registers)
DEFAULT_RECIPES = {name: spec.recipe for name, spec in REGISTRY.items()}


def build_methods(model: CLIPResNet, names: Sequence[str], methods: Sequence[str], *, k: int | None = None,
                  signs: torch.Tensor | None = None, sign_source: str | None = None,
                  templates: str | None = None, centring: str | None = None,
                  refine: PAMRConfig | None = None) -> list[SegmentationMethod]:
    """Build methods by name, sharing nothing but the model.

    Args:
        model: the model.
        names: C class names.
        methods: names from :data:`METHODS`, each at most once.
        k: pairs per class for the pair methods (default: :func:`default_k`).
        signs: ``(N, H)`` calibrated pair signs or None (+1 assumed).
        sign_source: where the signs came from (recorded in results).
        templates: override every method's template set (``openai``, ``maskclip``, ``single``).
        centring: override every method's centring (``auto``, ``classes``, ``reference``, ``none``).
        refine: refine every method's logits before the labels (:mod:`segclip.segment.refine`; recorded in its
            ``params["refine"]``), or None.

    Returns:
        The methods, in the order asked.

    Raises:
        ConfigError: unknown or repeated method names, bad class names or options.
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"Unknown methods {unknown}; choose from {', '.join(METHODS)}.")
    if len(set(methods)) != len(methods):
        raise ConfigError(f"Methods are listed more than once: {list(methods)}.")
    built: list[SegmentationMethod] = []
    for name in methods:
        spec = REGISTRY[name]
        recipe = TextRecipe(templates or spec.recipe.templates, centring or spec.recipe.centring)
        built.append(spec.build(model, names, name, recipe, k=k, signs=signs, sign_source=sign_source))
    if refine is not None:
        for method in built:
            method.refine = refine
            method.params["refine"] = refine.to_dict()
    return built
