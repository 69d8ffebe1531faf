"""Class-name text embeddings with template sets, optional centring, cached on disk (method.md, section 3).

Recipe: every prompt is encoded and L2-normalised; the per-class mean is L2-normalised again. Centring
subtracts the mean over a set of embeddings (the class set, or a reference vocabulary) and re-normalises.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path

import torch
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
from safetensors import safe_open
from safetensors.torch import save_file

from segclip.errors import CacheError, ConfigError
from segclip.models.loading import CLIPResNet
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


def _cache_key(model: CLIPResNet, names: list[str], templates: tuple[str, ...]) -> tuple[str, str]:
    meta = json.dumps({"version": CACHE_VERSION, "model": model.info.name, "weights": model.info.weights_hash,
                       "quick_gelu": model.info.quick_gelu, "templates": list(templates), "names": names},
                      sort_keys=True)
    return hashlib.sha256(meta.encode()).hexdigest()[:32], meta


def _read_cached(path: Path, meta: str, shape: tuple[int, int]) -> torch.Tensor | None:
    try:
        with safe_open(str(path), framework="pt") as handle:
            if (handle.metadata() or {}).get("key") != meta:
                log.warning("text-embedding cache %s is stale; rebuilding it", path)
                return None
            embeddings = handle.get_tensor("embeddings")
    except Exception as err:  # a damaged file can fail in many ways
        log.warning("text-embedding cache %s is unreadable (%s); rebuilding it", path, err)
        return None
    if tuple(embeddings.shape) != shape or not torch.isfinite(embeddings).all():
        log.warning("text-embedding cache %s is corrupt; rebuilding it", path)
        return None
    return embeddings


def encode_classes(model: CLIPResNet, names: list[str], templates: str | tuple[str, ...] = "openai", *,
                   cache: bool = True, cache_root: str | os.PathLike | None = None) -> torch.Tensor:
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
        CacheError: the cache folder cannot be written.

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
    prompts = [template.format(name) for name in names for template in templates]
    with torch.inference_mode():
        encoded = model.encode_text(prompts).float()
        encoded = encoded / encoded.norm(dim=-1, keepdim=True)
        embeddings = encoded.view(len(names), len(templates), -1).mean(dim=1)
        embeddings = embeddings / embeddings.norm(dim=-1, keepdim=True)
    if cache:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".tmp{os.getpid()}")
            save_file({"embeddings": embeddings.cpu().contiguous()}, str(tmp), metadata={"key": meta})
            tmp.replace(path)
        except OSError as err:
            raise CacheError(
                f"Cannot write the text-embedding cache in {folder} ({err.strerror}). Point SEGCLIP_CACHE at a "
                "writable folder, or disable the cache.") from err
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
