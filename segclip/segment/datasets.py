"""Evaluation datasets by name: PASCAL Context (59 / 60) and the synthetic benchmark, validated before model work."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segclip.data.pascal_context import PascalContext
from segclip.data.synthetic import generate_benchmark
from segclip.errors import ConfigError, DataError
from segclip.io import read_lines
from segclip.paths import cache_dir

DATASETS = ("synthetic", "pascal_context")
SYNTHETIC_VAL = 200
SYNTHETIC_SEED = 0


class LabelledFolder(PascalContext):
    """A dataset in PASCAL Context's layout with its own ``classnames.txt`` (the synthetic benchmark): raw label
    ``c + 1`` is class ``c``, raw 0 is ignored (Context-59 semantics with C classes).

    Args:
        root: folder holding ``VOCdevkit`` and ``classnames.txt``.
        limit: keep the first ``limit`` ids.

    Raises:
        DataError: a missing or empty ``classnames.txt``, or the layout errors of :class:`PascalContext`.
    """

    def __init__(self, root: str | Path, limit: int | None = None):
        names_file = Path(root) / "classnames.txt"
        names = read_lines(names_file, "class list (regenerate the dataset if it is damaged)", skip_blank=True)
        if not names:
            raise DataError(f"The class list {names_file} is empty; regenerate the dataset.")
        super().__init__(root, "val", 59, limit)
        self.names, self.num_classes = names, len(names)

    def class_names(self, names: str = "raw") -> list[str]:
        return list(self.names)


@dataclass
class EvalDataset:
    """A dataset ready for evaluation.

    Attributes:
        dataset: samples ``{"id", "image", "label"}``.
        class_names: C names in label order.
        description: what it is, for result files.
    """

    dataset: PascalContext
    class_names: list[str]
    description: dict[str, Any]


def open_dataset(name: str, data_root: Path | None, *, limit: int | None = None, num_classes: int = 59,
                 names: str = "raw") -> EvalDataset:
    """Open (and for ``synthetic``, generate on first use) an evaluation dataset.

    Args:
        name: ``synthetic`` or ``pascal_context``.
        data_root: dataset folder; for ``synthetic`` default ``<segclip cache>/synthetic/seed0-n200``, required
            for ``pascal_context``.
        limit: keep the first ``limit`` images.
        num_classes: PASCAL Context 59 or 60.
        names: PASCAL Context class-name set, ``raw`` or ``text``.

    Returns:
        The :class:`EvalDataset`.

    Raises:
        ConfigError: unknown dataset, missing ``--data-root``.
        DataError: missing or malformed data (the message names the file and how to prepare it).
    """
    if name == "synthetic":
        root = data_root or cache_dir() / "synthetic" / f"seed{SYNTHETIC_SEED}-n{SYNTHETIC_VAL}"
        generate_benchmark(root, n_val=SYNTHETIC_VAL, seed=SYNTHETIC_SEED)
        dataset = LabelledFolder(root, limit)
        return EvalDataset(dataset, dataset.class_names(), {
            "name": "synthetic", "root": str(root), "split": "val", "images": len(dataset),
            "seed": SYNTHETIC_SEED, "label_mapping": "raw c+1 -> c, raw 0 ignored"})
    if name == "pascal_context":
        if data_root is None:
            raise ConfigError("--dataset pascal_context needs --data-root PATH (the folder holding VOCdevkit).")
        dataset = PascalContext(data_root, "val", num_classes, limit)
        return EvalDataset(dataset, dataset.class_names(names), {
            "name": f"pascal_context_{num_classes}", "root": str(data_root), "split": "val", "images": len(dataset),
            "class_name_set": names,
            "label_mapping": "raw 0 -> 255 (ignored), c -> c-1" if num_classes == 59 else "raw labels kept"})
    raise ConfigError(f"Unknown dataset '{name}'; use one of {', '.join(DATASETS)}.")
