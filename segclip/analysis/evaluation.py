"""Zero-shot accuracy under interventions on the decomposition: rank-one reconstruction, principal components of
neuron contributions (paper Table 1) and mean-ablation (paper Figure 1).

Every intervention is a function of one :class:`~segclip.core.trace.Trace` returning modified image
embeddings; all of them are evaluated in the same resumable pass (:class:`ConditionAccuracy`). They work in alpha
space, because r[n, h] = alpha[n, h] w[n, h] + c_h is affine in alpha: a modified alpha goes through
:meth:`AttentionPool.output_from_pair_scalars` and nothing of size N x H x d is formed.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from segclip.analysis.components import principal_components
from segclip.analysis.statistics import Statistics, pair_constants
from segclip.analysis.stream import merge_rows
from segclip.core.attnpool import AttentionPool
from segclip.core.trace import Trace, trace_pool
from segclip.data.images import list_images
from segclip.errors import ConfigError, DataError
from segclip.io import read_lines

Condition = Callable[[Trace], torch.Tensor]


def read_labelled_folder(root: str | Path, class_names: str | Path | None = None
                         ) -> tuple[list[Path], torch.Tensor, list[str]]:
    """A labelled image folder: one subfolder per class, and optionally a class-names file.

    The class-names file has one line per class, ``folder`` or ``folder<TAB>text name`` (the text used for the
    zero-shot prompt; default: the folder name with ``_`` as spaces). Classes are in the file's order (default:
    sorted folder names).

    Args:
        root: the folder of class folders.
        class_names: the class-names file, or None.

    Returns:
        (image paths, (n,) long labels, class text names).

    Raises:
        DataError: missing root, no class folders, an empty class folder, or a class-names file that does not
            match the folders (names listed without a folder, folders not listed, duplicates, blank lines).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"labelled image folder {root} does not exist")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(f"{root} holds no class folders; put each class's images in a subfolder named after it")
    if class_names is None:
        entries = [(name, name.replace("_", " ")) for name in folders]
    else:
        lines = read_lines(class_names, "class-names file")
        entries = [(line.split("\t")[0].strip(), (line.split("\t")[1] if "\t" in line else
                                                  line.replace("_", " ")).strip()) for line in lines]
        listed = [folder for folder, _ in entries]
        duplicates = sorted({f for f in listed if listed.count(f) > 1})
        missing, unlisted = sorted(set(listed) - set(folders)), sorted(set(folders) - set(listed))
        if duplicates or missing or unlisted:
            raise DataError(
                f"class-names file {class_names} does not match the folders in {root}: "
                + "; ".join(part for part in (f"listed twice: {duplicates}" if duplicates else "",
                                              f"listed but no folder: {missing}" if missing else "",
                                              f"folders not listed: {unlisted}" if unlisted else "") if part))
    paths, labels = [], []
    for label, (folder, _) in enumerate(entries):
        found = list_images(root / folder)
        paths += found
        labels += [label] * len(found)
    return paths, torch.tensor(labels), [name for _, name in entries]


class ConditionAccuracy:
    """Zero-shot predictions of every condition on a labelled image set (an accumulator for ``run_pass``).

    Args:
        conditions: name -> function of a trace returning (B, d) image embeddings.
        texts: (C, d) unit class embeddings.
        labels: (n,) true classes of the images.
    """

    def __init__(self, conditions: dict[str, Condition], texts: torch.Tensor, labels: torch.Tensor):
        self.conditions, self.texts, self.labels = conditions, texts, labels
        self.predictions = torch.full((len(labels), len(conditions)), -1, dtype=torch.long)

    @torch.inference_mode()
    def update(self, trace: Trace, first: int) -> None:
        for column, condition in enumerate(self.conditions.values()):
            embeddings = condition(trace).to(self.texts.dtype)
            logits = embeddings / embeddings.norm(dim=-1, keepdim=True) @ self.texts.T
            self.predictions[first:first + len(trace), column] = logits.argmax(-1).cpu()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"predictions": self.predictions}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.predictions = state["predictions"].clone()

    def merge(self, other: ConditionAccuracy) -> None:
        """Take the predictions ``other`` made (images of the same list; a row is done when it is >= 0)."""
        self.predictions = merge_rows(self.predictions, other.predictions, self.predictions[:, 0] >= 0,
                                      other.predictions[:, 0] >= 0, "condition accuracy")

    def accuracies(self) -> dict[str, float]:
        """Accuracy in percent per condition (over the images done)."""
        done = self.predictions[:, 0] >= 0
        if not done.any():
            raise DataError("no image was evaluated")
        correct = self.predictions[done] == self.labels[done, None]
        return {name: 100 * correct[:, i].double().mean().item() for i, name in enumerate(self.conditions)}


def rank_one_condition(pool: AttentionPool, stats: Statistics) -> Condition:
    """Each r[n, h] replaced by mean + ((r - mean) . u) u with u = s w / |w| (the first principal component).

    In alpha space the coefficient is (alpha - mean) |w| s and the reconstruction alpha_hat = mean +
    coefficient s / |w|; it equals alpha up to rounding, so accuracy equals the baseline (docs/method.md §2.2).
    """
    norms = pair_constants(pool)["norms2"].sqrt()
    mean, signs = stats.mean_scalars, stats.signs

    def condition(trace: Trace) -> torch.Tensor:
        dtype = trace.pair_scalars.dtype
        n, s, m = norms.to(dtype), signs.to(dtype), mean.to(dtype)
        coefficient = (trace.pair_scalars - m) * n * s
        return pool.output_from_pair_scalars(m + coefficient * s / n.clamp_min(1e-30))
    return condition


def neuron_pca_condition(pool: AttentionPool, stats: Statistics, components: int, samples: str = "all"
                         ) -> Condition:
    """Each neuron contribution r[n] replaced by its mean plus its projection on the first principal components.

    Args:
        pool, stats: the pool and calibration statistics.
        components: principal components per neuron.
        samples: ``all`` images or ``top`` (paper A.2, the authors' procedure); see
            :func:`~segclip.analysis.components.principal_components`.
    """
    projectors = principal_components(pool, stats, "neurons", components, samples).projector()  # (N, H, H)

    def condition(trace: Trace) -> torch.Tensor:
        dtype = trace.pair_scalars.dtype
        mean = stats.mean_scalars.to(dtype)
        delta = torch.einsum("nhk,bnk->bnh", projectors.to(dtype), trace.pair_scalars - mean)
        return pool.output_from_pair_scalars(mean + delta)
    return condition


def keep_top(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask of the top ``fraction`` of units by score (ties broken by index), same shape as ``scores``."""
    count = round(fraction * scores.numel())
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[scores.flatten().float().cpu().argsort(descending=True, stable=True)[:count]] = True
    return mask.view(scores.shape)


def ablation_condition(pool: AttentionPool, stats: Statistics, unit: str, fraction: float) -> Condition:
    """Keep the top ``fraction`` of units (by the mean of their top-percentile norms), mean-ablate the rest.

    Args:
        pool: the attention pool.
        stats: statistics of the calibration images (means and rankings).
        unit: ``pairs`` (alpha[n, h] -> mean), ``neurons`` (alpha[n, :] -> mean, i.e. r[n] -> its mean) or
            ``activations`` (layer4 map x[n] -> its mean map; attention recomputed).
        fraction: share of units kept, in [0, 1].

    Returns:
        The condition.

    Raises:
        ConfigError: unknown unit.
    """
    if unit == "pairs":
        keep = keep_top(stats.pair_top_norm, fraction)
    elif unit == "neurons":
        keep = keep_top(stats.neuron_top_norm, fraction)[:, None].expand(-1, pool.num_heads)
    elif unit == "activations":
        keep_maps = keep_top(stats.activation_top_norm, fraction)

        def ablate_activations(trace: Trace) -> torch.Tensor:
            mean = stats.activation_mean.to(trace.neurons).view(1, *trace.neurons.shape[1:])
            kept = keep_maps.to(trace.neurons.device)[None, :, None, None]
            return trace_pool(pool, torch.where(kept, trace.neurons, mean)).output
        return ablate_activations
    else:
        raise ConfigError(f"unknown unit '{unit}'; use pairs, neurons or activations")

    def ablate(trace: Trace) -> torch.Tensor:
        mean = stats.mean_scalars.to(trace.pair_scalars)
        return pool.output_from_pair_scalars(torch.where(keep.to(mean.device), trace.pair_scalars, mean))
    return ablate
