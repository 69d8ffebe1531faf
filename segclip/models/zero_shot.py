"""Zero-shot classification texts over a fixed label set, where two classes may share a text name.

Standard label sets repeat names (ImageNet's open_clip names: 'missile' twice, 'sunglasses' twice). Such classes
get the same text embedding, so their logits tie exactly; :func:`zero_shot_predict` (and ``argmax``, which returns
the first maximum) gives the tie to the lowest class index. Segmentation class lists are a user's own and keep
refusing duplicates (:func:`segclip.models.text.check_class_names`).
"""
from __future__ import annotations

import torch

from segclip.models.loading import CLIPResNet
from segclip.models.text import check_class_names, encode_classes

TIE_RULE = "lowest class index wins an exact tie (classes with identical text names)"


def unique_names(names: list[str]) -> tuple[list[str], torch.Tensor]:
    """Distinct names (first occurrence order, compared stripped and case-insensitive) and, per class, the row of
    its name: (C,) long.

    Raises:
        ConfigError: an empty list or blank names.

    Example:
        >>> unique_names(["missile", "cat", "Missile "])
        (['missile', 'cat'], tensor([0, 1, 0]))
    """
    stripped = [str(n).strip() for n in names]
    check_class_names(list(dict.fromkeys(n.lower() for n in stripped)) if stripped else [])
    rows: dict[str, int] = {}
    unique, index = [], []
    for name in stripped:
        if name.lower() not in rows:
            rows[name.lower()] = len(unique)
            unique.append(name)
        index.append(rows[name.lower()])
    return unique, torch.tensor(index)


def encode_classification_names(model: CLIPResNet, names: list[str], templates: str | tuple[str, ...] = "openai",
                                **options) -> torch.Tensor:
    """Unit class embeddings for zero-shot classification, duplicates allowed (identical rows for one name).

    Args:
        model: the loaded model.
        names: C class text names (may repeat).
        templates: as :func:`~segclip.models.text.encode_classes`; ``options`` are passed on (cache, cache_root).

    Returns:
        (C, d) float32 rows of norm one; classes with the same name have the same row.

    Raises:
        ConfigError: an empty list, blank names or bad templates.

    Example:
        >>> from segclip.models import load_model
        >>> texts = encode_classification_names(load_model(), ["ball", "star", "ball"], "single", cache=False)
        >>> texts.shape, bool((texts[0] == texts[2]).all())
        (torch.Size([3, 64]), True)
    """
    unique, index = unique_names(names)
    return encode_classes(model, unique, templates, **options)[index.to(model.device)]


def zero_shot_predict(logits: torch.Tensor) -> torch.Tensor:
    """Predicted classes of (B, C) logits, an exact tie going to the lowest class index: (B,) long.

    Example:
        >>> zero_shot_predict(torch.tensor([[0.1, 0.7, 0.7], [0.5, 0.2, 0.5]]))
        tensor([1, 0])
    """
    best = logits.max(dim=-1, keepdim=True).values
    candidates = torch.arange(logits.shape[-1], device=logits.device).expand_as(logits)
    return torch.where(logits == best, candidates, logits.shape[-1]).min(dim=-1).values
