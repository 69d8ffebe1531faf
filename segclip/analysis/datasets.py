"""The datasets an analysis reads, chosen by ``--dataset`` with ``--data-root``: plain folders (class subfolders
or an unlabelled image list), ImageNet val and Stanford Cars (:mod:`segclip.data.classification`), all as one
:class:`~segclip.data.classification.ImageSet`, validated before any model work."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from segclip.analysis.evaluation import read_labelled_folder
from segclip.config import Config, option
from segclip.data.classification import (
    STANFORD_CARS_IMAGES,
    ImageSet,
    read_imagenet,
    read_stanford_cars,
)
from segclip.data.images import list_images
from segclip.errors import ConfigError, DataError


def read_folder(root: str | Path, class_names: str | Path | None = None, labelled: bool | None = None) -> ImageSet:
    """A plain folder: class subfolders (:func:`~segclip.analysis.evaluation.read_labelled_folder`) or, without
    subfolders, an unlabelled image list (:func:`~segclip.data.images.list_images`).

    Raises:
        DataError: see the two readers.
    """
    root = Path(root)
    has_folders = root.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
    if labelled if labelled is not None else has_folders:
        paths, labels, names = read_labelled_folder(root, class_names)
        return ImageSet(paths, labels, names, {"class": [names[i] for i in labels.tolist()]},
                        description={"dataset": "folder", "root": str(root), "images": len(paths),
                                     "classes": len(names)})
    paths = list_images(root)
    return ImageSet(paths, None, [], description={"dataset": "folder", "root": str(root), "images": len(paths)})


DATASETS = ("folder", "imagenet", "stanford_cars")


def read_dataset(name: str, root: str | Path, *, split: str | None = None, class_names: str | Path | None = None,
                 colours: str | Path | None = None) -> ImageSet:
    """The reader chosen by ``--dataset`` (``folder``, ``imagenet``, ``stanford_cars``) on ``--data-root``.

    Args:
        name: the dataset kind.
        root: its folder.
        split: Stanford Cars' split (default train); ImageNet reads val.
        class_names: a class-names file for a labelled folder.
        colours: Stanford Cars' colour CSV.

    Returns:
        The :class:`ImageSet`.

    Raises:
        DataError: an unknown dataset kind, or the reader's errors.

    Example:
        >>> read_dataset("cifar", ".")
        Traceback (most recent call last):
        ...
        segclip.errors.DataError: unknown dataset 'cifar'; use one of folder, imagenet, stanford_cars
    """
    if name == "imagenet":
        return read_imagenet(root)
    if name == "stanford_cars":
        return read_stanford_cars(root, split or "train", colours)
    if name == "folder":
        return read_folder(root, class_names)
    raise DataError(f"unknown dataset '{name}'; use one of {', '.join(DATASETS)}")


@dataclass(frozen=True)
class DatasetConfig(Config):
    """Which dataset an analysis reads (the ``--dataset`` / ``--data-root`` family of flags).

    Example:
        >>> DatasetConfig(dataset="imagenet")
        Traceback (most recent call last):
        ...
        segclip.errors.ConfigError: --dataset imagenet needs --data-root (the folder holding val/).
    """

    dataset: str = option("folder", help="dataset layout: folder (class subfolders or plain images), imagenet "
                                         "(val/<wnid>/ or flat ILSVRC2012 files + devkit), stanford_cars "
                                         "(torchvision's layout)", choices=DATASETS)
    data_root: Path | None = option(None, help="the dataset folder")
    split: str = option("train", help="Stanford Cars split (train, as the paper, or test)", choices=("train", "test"))
    colours: Path | None = option(None, help="Stanford Cars colour labels: a CSV with columns image, colour")
    class_names: Path | None = option(None, help="class-names file of a labelled folder (folder<TAB>text name)")

    def __post_init__(self) -> None:
        super().__post_init__()  # field types (segclip.config.Config)
        if self.dataset not in DATASETS:
            raise ConfigError(f"--dataset must be one of {', '.join(DATASETS)}, got '{self.dataset}'.")
        if self.data_root is None:
            where = {"imagenet": "the folder holding val/", "stanford_cars": "the folder holding stanford_cars/",
                     "folder": "the image folder"}[self.dataset]
            raise ConfigError(f"--dataset {self.dataset} needs --data-root ({where}).")
        if self.split not in STANFORD_CARS_IMAGES:
            raise ConfigError(f"--split must be train or test, got '{self.split}'.")
        if self.colours is not None and self.dataset != "stanford_cars":
            raise ConfigError("--colours applies to --dataset stanford_cars only.")

    def read(self) -> ImageSet:
        """Read and validate the dataset (:func:`read_dataset`)."""
        return read_dataset(self.dataset, self.data_root, split=self.split, class_names=self.class_names,
                            colours=self.colours)
