"""Class-name files as the training-free segmentation field writes them, and the rule that turns queries into labels.

A class file has one line per class, in label order; a line may hold several names (synonyms) separated by
commas (``person, person in shirt, person in jeans``). For datasets whose class 0 is a background, the first line
lists stuff words standing in for it (VOC21, COCO-Object). This is the format of the SCLIP / NACLIP / ClearCLIP
``configs/cls_<dataset>.txt`` files; the eight benchmark files ship with segclip (:func:`benchmark_class_file`),
with PC-459 and ADE-847 as ProxyCLIP / Trident write them (``configs/cls_context459.txt``, ``cls_ade20k847.txt``:
the 459 PASCAL Context names spaced into words, the 847 ADE20K-full names with their WordNet synonyms).

Every name is its own text query. Per image, the query logits ``(Q, H, W)`` (cosines, at the image's original size)
become labels by the rule of those repositories (SCLIP's ``postprocess_result``):

1. one softmax of ``scale * logits`` over all Q queries;
2. a class's probability is the maximum over its synonyms' probabilities;
3. with an area threshold (VOC21: 0.1): take the arg-max class per pixel; a foreground class (1..C-1) is kept only
   if its arg-max area is larger than ``area_threshold`` times the arg-max area of all foreground classes together
   (background pixels do not count); the probabilities of the other foreground classes are set to zero;
4. labels are the arg-max over classes (the first maximum on ties);
5. pixels whose maximum class probability (after step 3) is below ``prob_threshold`` become class 0.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import torch

from segclip.errors import ConfigError, DataError
from segclip.io import read_lines

BENCHMARK_CLASS_FILES = ("voc21", "voc20", "context60", "context59", "coco_object", "coco_stuff", "cityscapes",
                         "ade20k", "pc459", "ade847")


def benchmark_class_file(name: str) -> Path:
    """The shipped class file of a benchmark dataset (the SCLIP-family query lines).

    Args:
        name: one of ``BENCHMARK_CLASS_FILES``.

    Returns:
        Path of ``segclip/data/classnames/<name>.txt``.

    Raises:
        ConfigError: unknown name.

    Example:
        >>> benchmark_class_file("voc20").name
        'voc20.txt'
    """
    if name not in BENCHMARK_CLASS_FILES:
        raise ConfigError(f"No shipped class file for {name!r}; known: {', '.join(BENCHMARK_CLASS_FILES)}.")
    return Path(str(resources.files("segclip.data").joinpath("classnames", f"{name}.txt")))


def parse_query_lines(lines: list[str], source: str = "class list",
                      allow_duplicates: bool = False) -> tuple[list[str], list[int], list[str]]:
    """Split class lines into queries (see :func:`read_query_file`; ``source`` names the origin in messages)."""
    if not lines:
        raise DataError(f"The {source} has no classes; write one class per line.")
    queries: list[str] = []
    query_to_class: list[int] = []
    class_names: list[str] = []
    first_line: dict[str, int] = {}
    for index, line in enumerate(lines):
        names = [name.strip() for name in line.split(",")]
        if not line.strip() or any(not name for name in names):
            raise DataError(f"Line {index + 1} of the {source} has an empty name ({line!r}); write names separated "
                            "by ', ' with none left empty.")
        if len(set(names)) != len(names):
            twice = next(name for name in names if names.count(name) > 1)
            raise DataError(f"The name {twice!r} appears twice on line {index + 1} of the {source}; list each "
                            "synonym once.")
        for name in names:
            if name in first_line and not allow_duplicates:
                raise DataError(f"The name {name!r} on line {index + 1} of the {source} also stands for the class "
                                f"on line {first_line[name]}; give each class its own names (a shared name's two "
                                "queries tie, and the earlier class always wins the tie).")
            first_line.setdefault(name, index + 1)
            queries.append(name)
            query_to_class.append(index)
        class_names.append(", ".join(names))
    return queries, query_to_class, class_names


def read_query_file(path: str | Path, allow_duplicates: bool = False) -> tuple[list[str], list[int], list[str]]:
    """Read a class file: one line per class, synonyms on a line separated by commas.

    Names are split at commas and stripped (SCLIP splits at ``", "``; the shipped files read the same either way).

    Args:
        path: the file (UTF-8; a shipped one from :func:`benchmark_class_file` or a user's own).
        allow_duplicates: accept a name on two lines (each occurrence is its own query). SCLIP's COCO-Object
            file has one: ``bed`` among the background words (line 1) and as the class on line 61; the shipped
            file keeps it, so results match the field's (there, class ``bed`` loses every tie to background).

    Returns:
        ``(queries, query_to_class, class_names)``: every name as its own text query (file order),
        the class index (0-based line number) of each query, and per class its line (names joined by ``", "``).

    Raises:
        DataError: the file cannot be read, is empty, has empty lines or empty names, a name appears twice on a
            line, or (without ``allow_duplicates``) on two lines.

    Example:
        >>> queries, query_to_class, class_names = read_query_file(benchmark_class_file("voc20"))
        >>> len(class_names), len(queries), queries[14:16], query_to_class[14:16]
        (20, 30, ['person', 'person in shirt'], [14, 14])
    """
    path = Path(path)
    return parse_query_lines(read_lines(path, "class file"), f"class file {path}", allow_duplicates)


def _class_index(query_to_class: list[int] | torch.Tensor, num_queries: int, device: torch.device) -> torch.Tensor:
    index = torch.as_tensor(query_to_class, dtype=torch.long, device=device)
    if index.ndim != 1 or index.numel() != num_queries:
        raise ValueError(f"query_to_class needs one class per query ({num_queries}), got shape {tuple(index.shape)}")
    if index.numel() and (index.min() < 0 or set(index.unique().tolist()) != set(range(int(index.max()) + 1))):
        raise ValueError("query_to_class must use every class 0..C-1 at least once")
    return index


def query_class_probabilities(query_logits: torch.Tensor, query_to_class: list[int] | torch.Tensor,
                              scale: float) -> torch.Tensor:
    """Class probabilities from query logits: one softmax over all queries, then the max over each class's synonyms.

    Args:
        query_logits: ``(Q, H, W)`` logits (cosines) per query.
        query_to_class: ``(Q,)`` class index of each query (classes ``0..C-1``, each used at least once).
        scale: logit scale applied before the softmax.

    Returns:
        ``(C, H, W)`` probabilities (a class's is its best synonym's softmax probability).

    Example:
        >>> logits = torch.tensor([[[0.0]], [[1.0]], [[0.5]]])
        >>> query_class_probabilities(logits, [0, 1, 1], scale=1.0).flatten().round(decimals=3)
        tensor([0.1860, 0.5060])
    """
    if query_logits.ndim != 3:
        raise ValueError(f"expected (Q, H, W) query logits, got shape {tuple(query_logits.shape)}")
    index = _class_index(query_to_class, query_logits.shape[0], query_logits.device)
    probabilities = (query_logits * scale).softmax(dim=0)  # (Q, H, W)
    num_classes = int(index.max()) + 1
    out = probabilities.new_zeros((num_classes, *probabilities.shape[1:]))
    target = index.view(-1, 1, 1).expand_as(probabilities)
    return out.scatter_reduce_(0, target, probabilities, "amax", include_self=False)  # (C, H, W)


def assign_query_labels(query_logits: torch.Tensor, query_to_class: list[int] | torch.Tensor, scale: float,
                        prob_threshold: float = 0.0, area_threshold: float | None = None) -> torch.Tensor:
    """Labels of one image by the SCLIP-family rule (module docstring, steps 1-5).

    Args:
        query_logits: ``(Q, H, W)`` logits per query at the image's original size.
        query_to_class: ``(Q,)`` class index of each query.
        scale: logit scale before the softmax.
        prob_threshold: pixels whose top class probability is below it become class 0 (0 disables).
        area_threshold: VOC21's rule: foreground classes whose arg-max area is at most this fraction of the
            foreground arg-max area are dropped before the arg-max; None disables.

    Returns:
        ``(H, W)`` int64 class indices.

    Raises:
        ValueError: malformed shapes, or thresholds outside [0, 1].

    Example:
        >>> logits = torch.tensor([[[0.0, 0.0]], [[1.0, 0.0]], [[0.5, 0.1]]])  # 3 queries, a 1 x 2 image
        >>> assign_query_labels(logits, [0, 1, 1], scale=10.0, prob_threshold=0.6)
        tensor([[1, 0]])
    """
    if not 0.0 <= prob_threshold <= 1.0 or (area_threshold is not None and not 0.0 <= area_threshold <= 1.0):
        raise ValueError(f"thresholds must lie in [0, 1], got {prob_threshold=}, {area_threshold=}")
    probabilities = query_class_probabilities(query_logits, query_to_class, scale)  # (C, H, W)
    if area_threshold is not None:
        num_classes = probabilities.shape[0]
        areas = torch.bincount(probabilities.argmax(0).flatten(), minlength=num_classes)[1:]  # (C-1,)
        keep = (areas > area_threshold * areas.sum()).to(probabilities.dtype)
        probabilities[1:] *= keep[:, None, None]
    top = probabilities.amax(0)  # (H, W)
    labels = probabilities.argmax(0)  # (H, W), the first maximum on ties
    return torch.where(top < prob_threshold, torch.zeros_like(labels), labels)
