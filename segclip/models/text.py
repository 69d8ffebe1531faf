"""Class-name text embeddings with template sets, optional centring, cached on disk (docs/method.md §4).

Recipe: every prompt is encoded and L2-normalised; the per-class mean is L2-normalised again. Centring
subtracts the mean over a set of embeddings (the class set, or a reference vocabulary) and re-normalises.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from segclip.errors import ConfigError, OutputError
from segclip.io import atomic_save_tensors, read_tensors
from segclip.models.loading import CLIPResNet, encode_tokens
from segclip.paths import cache_dir

log = logging.getLogger(__name__)

MASKCLIP_EXTRA = (
    "there is a {} in the scene.", "there is the {} in the scene.", "this is a {} in the scene.",
    "this is the {} in the scene.", "this is one {} in the scene.",
)
OPENAI_TEMPLATES = tuple(template("{}") for template in OPENAI_IMAGENET_TEMPLATES)
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "openai": OPENAI_TEMPLATES,  # the 80 OpenAI ImageNet templates
    "maskclip": OPENAI_TEMPLATES + MASKCLIP_EXTRA,  # MaskCLIP's 85
    "single": ("a photo of a {}.",),
}
CACHE_VERSION = 1


def check_class_names(names: list[str]) -> list[str]:
    """Strip names; raise :class:`ConfigError` for an empty list, blank or duplicate names."""
    if not names:
        raise ConfigError("The class list is empty: pass class names, e.g. --classes \"cat,dog,grass\".")
    stripped = [str(name).strip() for name in names]
    blanks = [i for i, name in enumerate(stripped) if not name]
    if blanks:
        raise ConfigError(f"Class names at positions {blanks} are blank; remove empty entries from the class list.")
    seen: dict[str, int] = {}
    for name in stripped:
        seen[name.lower()] = seen.get(name.lower(), 0) + 1
    duplicates = sorted(name for name, count in seen.items() if count > 1)
    if duplicates:
        raise ConfigError(f"Duplicate class names: {duplicates}. Each class must be named once.")
    return stripped


def resolve_templates(templates: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    """A template set by name (``openai``, ``maskclip``, ``single``) or an explicit list with ``{}``."""
    if isinstance(templates, str):
        if templates not in TEMPLATE_SETS:
            raise ConfigError(f"Unknown template set '{templates}'; use one of {', '.join(TEMPLATE_SETS)}.")
        return TEMPLATE_SETS[templates]
    templates = tuple(templates)
    if not templates or not all("{}" in t for t in templates):
        raise ConfigError("Every template must contain '{}' where the class name goes.")
    return templates


def check_prompt_lengths(model: CLIPResNet, names: list[str], templates: tuple[str, ...],
                         tokens: torch.Tensor | None = None) -> None:
    """Warn about prompts longer than the text context (the tokenizer cuts them), and refuse names that the cut
    makes identical to another name's.

    Args:
        model: the model (its tokenizer).
        names: C class names.
        templates: T templates.
        tokens: the ``(C T, context)`` tokens of the prompts, name-major, when already tokenised.

    Raises:
        ConfigError: two class names whose prompts are identical after truncation (their embeddings would be
            bit-identical and the label map would split between them in noise).
    """
    tokenizer = model.tokenizer
    context = int(getattr(tokenizer, "context_length", 77))
    if tokens is None:
        tokens = tokenizer([template.format(name) for name in names for template in templates])
    full = (tokens[:, -1] != 0).view(len(names), len(templates)).any(1)  # a prompt filling the whole context
    for index in full.nonzero().flatten().tolist():
        name = names[index]
        longest = max(len(tokenizer.encode(template.format(name))) + 2 for template in templates)  # + start, end
        if longest > context:
            log.warning("the class name '%s' makes prompts of up to %d tokens; the text context of %s is %d, so "
                        "they are cut (shorten the name to keep all of it)", name[:80], longest, model.info.name,
                        context)
    seen: dict[bytes, str] = {}
    for name, rows in zip(names, tokens.view(len(names), -1)):
        key = rows.numpy().tobytes()
        if key in seen:
            raise ConfigError(f"The class names '{seen[key][:80]}' and '{name[:80]}' are identical after their "
                              f"prompts are cut to the {context}-token text context; shorten them so that they "
                              "differ within it.")
        seen[key] = name


def _cache_key(model: CLIPResNet, names: list[str], templates: tuple[str, ...]) -> tuple[str, str]:
    meta = json.dumps({"version": CACHE_VERSION, "model": model.info.name, "weights": model.info.weights_hash,
                       "quick_gelu": model.info.quick_gelu, "templates": list(templates), "names": names},
                      sort_keys=True)
    return hashlib.sha256(meta.encode()).hexdigest()[:32], meta


def checksum(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (CPU, contiguous)."""
    return hashlib.sha256(tensor.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def _read_cached(path: Path, meta: str, shape: tuple[int, int]) -> torch.Tensor | None:
    """The cached embeddings, or None (with a warning saying why) when the entry is stale or damaged: its key must
    match and its tensor bytes must match the checksum stored with them."""
    saved = read_tensors(path)  # None (with a warning) when unreadable or damaged
    if saved is None:
        return None
    tensors, stored = saved
    if stored.get("key") != meta:
        log.warning("text-embedding cache %s is stale; rebuilding it", path)
        return None
    embeddings = tensors.get("embeddings")
    if embeddings is None or tuple(embeddings.shape) != shape or stored.get("sha256") != checksum(embeddings):
        log.warning("text-embedding cache %s is damaged (its bytes do not match their checksum); rebuilding it",
                    path)
        return None
    return embeddings


def encode_classes(model: CLIPResNet, names: list[str], templates: str | tuple[str, ...] = "openai", *,
                   cache: bool = True, cache_root: str | Path | None = None) -> torch.Tensor:
    """Unit-norm class embeddings averaged over templates (not centred).

    Args:
        model: the loaded model.
        names: C class names.
        templates: a template set name or a list of templates with ``{}``.
        cache: read and write the on-disk cache (keyed by model, weights hash, templates and names; a stale or
            corrupt entry is detected and rebuilt).
        cache_root: cache folder (default: ``<segclip cache>/text``).

    Returns:
        (C, d) float32 tensor on the model's device, rows of norm one.

    Raises:
        ConfigError: bad class names or templates.
        OutputError: the cache folder cannot be written.

    Example:
        >>> from segclip.models import load_model
        >>> model = load_model("RN50", "none")
        >>> encode_classes(model, ["cat", "dog"], "single", cache=False).shape
        torch.Size([2, 1024])
    """
    names = check_class_names(names)
    templates = resolve_templates(templates)
    key, meta = _cache_key(model, names, templates)
    folder = Path(cache_root) if cache_root is not None else cache_dir() / "text"
    path = folder / f"{key}.safetensors"
    shape = (len(names), model.info.embed_dim)
    if cache and path.is_file():
        cached = _read_cached(path, meta, shape)
        if cached is not None:
            return cached.to(model.device)
    tokens = model.tokenizer([template.format(name) for name in names for template in templates])
    check_prompt_lengths(model, names, templates, tokens)
    with torch.inference_mode():  # prompts grouped by length, each batch cut after its longest (encode_tokens)
        encoded = encode_tokens(model.clip, tokens).float()
        encoded = encoded / encoded.norm(dim=-1, keepdim=True)
        embeddings = encoded.view(len(names), len(templates), -1).mean(dim=1)
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
    if cache:
        try:
            atomic_save_tensors(path, {"embeddings": embeddings}, {"key": meta, "sha256": checksum(embeddings)})
        except OutputError as err:
            raise OutputError(
                f"Cannot write the text-embedding cache in {folder} "
                f"({err.__cause__.strerror if err.__cause__ else err}). Point SEGCLIP_CACHE at a writable folder (the "
                "cache can be cleared at any time by deleting it).") from err
    return embeddings


def centre(embeddings: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """Subtract the mean of ``reference`` (default: ``embeddings`` themselves) and re-normalise.

    Args:
        embeddings: (C, d) unit-norm class embeddings.
        reference: (M, d) embeddings whose mean is removed; use a reference vocabulary for small class sets,
            where centring over the classes degenerates (two centred vectors are opposite).

    Returns:
        (C, d) unit-norm.
    """
    mean = (embeddings if reference is None else reference).mean(dim=0, keepdim=True)
    centred = embeddings - mean
    return centred / centred.norm(dim=-1, keepdim=True).clamp_min(1e-12)
