"""``segclip analyze label`` (paper Figure 2, Table 2): every unit's direction as a sparse combination of words.

Pairs are labelled through their directions w[n, h]; neurons and heads through the principal components of their
contributions (or heads by TextSpan over their covariance). With a labelled folder, zero-shot accuracy is measured
with every unit replaced by its first j words.
"""
from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from segclip.analysis.common import (
    UNITS,
    AnalysisConfig,
    AnalysisResult,
    DatasetOptions,
    Timer,
    analysis_provenance,
    check_out,
    evaluate,
    labelled_set,
    parse_units,
    pc_source,
    read_labelled,
    statistics_for,
)
from segclip.analysis.components import PC_SAMPLES, principal_components
from segclip.analysis.omp import (
    component_text_condition,
    label_components,
    label_pairs,
    read_vocabulary,
    sparse_text_condition,
    word_dictionary,
)
from segclip.analysis.textspan import text_span, text_span_condition
from segclip.config import option
from segclip.data.images import list_images
from segclip.errors import ConfigError
from segclip.models.loading import ModelSource, resolve_model
from segclip.models.text import TEMPLATE_SETS, encode_classes
from segclip.viz.plots import line_plot


@dataclass(frozen=True, kw_only=True)
class LabelConfig(DatasetOptions, AnalysisConfig):
    """Options of ``segclip analyze label``."""

    units: tuple[str, ...] = option(UNITS, help="comma-separated units to label: pairs (directions w), neurons and "
                                                "heads (their contributions' principal components; need "
                                                "statistics) (default: all three).")
    components: int = option(1, help="principal components labelled per neuron and per head (default: 1).")
    pc_samples: str = option("top", choices=PC_SAMPLES,
                             help="PCs of neurons and heads as the paper labels them (top: paper A.2, the authors' "
                                  "procedure: each unit's k = --top-k contributions farthest from its mean over all "
                                  "images, not re-centred, majority-vote orientation) or from the covariance over "
                                  "all images (all) (default: top, the paper's).")
    head_labels: str = option("pcs", choices=("pcs", "textspan"),
                              help="label heads by OMP of their principal components (pcs), or by TextSpan "
                                   "(Gandelsman et al. 2024: m texts greedily spanning the head's variance, from its "
                                   "covariance) (default: pcs).")
    images: Path | None = option(None, help="labelled folder for accuracy vs m (optional).")
    class_names: Path | None = option(None, help="file: one line per class, 'folder' or 'folder<TAB>text name'.")
    calibration_images: Path | None = option(None, help="folder for the statistics.")
    templates: str = option("openai", choices=tuple(TEMPLATE_SETS), help="templates of the class texts.")
    vocabulary: Path | None = option(None, help="word file, one per line (default: the 30,000 most common English "
                                                "words, wordfreq).")
    vocabulary_size: int = option(30000, help="words from wordfreq (default: 30000).")
    dictionary: str = option("authors", choices=("authors", "raw"),
                             help="OMP dictionary: authors (the paper's: word embeddings minus their mean over the "
                                  "vocabulary, each dimension divided by its norm over the vocabulary) or raw "
                                  "(unit-norm word embeddings) (default: authors).")
    word_templates: str = option("openai", choices=("openai", "maskclip", "single"),
                                 help="templates the words are embedded with (default: openai, the authors' 80 "
                                      "templates; single is 80x faster to embed).")
    words: int = option(64, help="m, words per unit (default: 64).")
    record: tuple[int, ...] = option((1, 2, 4, 8, 16, 32, 64),
                                     help="sparsities j at which accuracy is evaluated, each <= --words (default: "
                                          "1,2,4,...,64).")
    table: int = option(5, help="top words per unit in the CSV (default: 5).")
    table_sparsity: int = option(8, help="the CSV's words come from the decomposition with this many words (default: "
                                         "8; with m close to d the full decomposition is ill-conditioned and its "
                                         "coefficients say little).")

    def __post_init__(self) -> None:
        super().__post_init__()
        units = parse_units(self.units)
        if set(units) - {"pairs"} and self.dataset_config() is None and self.calibration_images is None \
                and self.statistics is None:
            raise ConfigError("--units neurons and heads are labelled from their covariances, which need statistics: "
                              "give --images (or --dataset with --data-root), --calibration-images or --statistics "
                              "(or --units pairs).")
        if self.table_sparsity < 1:
            raise ConfigError("--table-sparsity must be at least 1.")
        if self.table < 1 or self.vocabulary_size < 1:
            raise ConfigError("--table and --vocabulary-size must be at least 1.")


def _word_lists(vocabulary: list[str], index: torch.Tensor, coefficients: torch.Tensor, top: int) -> list[str]:
    """Per unit, its ``top`` words by |coefficient| as 'word(+0.123) ...': (..., >= j), (..., j) -> units in order."""
    coefficients = coefficients.cpu().flatten(0, -2)
    index = index[..., :coefficients.shape[-1]].cpu().flatten(0, -2)
    order = coefficients.abs().argsort(dim=-1, descending=True)[:, :top]
    return [" ".join(f"{vocabulary[w]}({c:+.3f})" for w, c in zip(words, weights))
            for words, weights in zip(index.gather(-1, order).tolist(), coefficients.gather(-1, order).tolist())]


@dataclass
class LabelResult(AnalysisResult):
    """Word tables (``rows``), OMP times, and accuracy (%) per unit kind and number of words j.

    Attributes:
        accuracy: ``{"baseline": ..., "<unit> <j> words": ...}`` (empty without a labelled folder).
        curves: per unit kind (display name), ``(js, accuracies)``.
        labelled: units labelled per kind.
    """

    accuracy: dict[str, float] | None = None
    curves: dict[str, tuple[list[int], list[float]]] | None = None
    labelled: dict[str, int] | None = None
    vocabulary_size: int = 0
    title: str = ""

    def plot(self, path: Path) -> bool:
        if not self.accuracy:
            return False
        line_plot(path, self.curves, xlabel="words per unit (m)", ylabel="zero-shot accuracy (%)",
                  baseline=self.accuracy["baseline"], title=self.title, logx=True)
        return True

    def summary(self) -> str:
        """Counts, accuracy per word count, and the words of the first units of each kind (all in label.csv)."""
        text = (f"labelled {', '.join(f'{v} {k}' for k, v in self.labelled.items())} over {self.vocabulary_size} "
                "words\n" + "".join(f"{k}: {v:.2f}%\n" for k, v in (self.accuracy or {}).items()))
        shown: dict[str, int] = {}
        lines = []
        for row in self.rows:
            if shown.get(row["unit"], 0) < 3:
                shown[row["unit"]] = shown.get(row["unit"], 0) + 1
                name = " ".join(f"{k} {row[k]}" for k in ("neuron", "head", "component") if row.get(k) not in (None, ""))
                lines.append(f"| {row['unit']} {name} | {row['words']} |")
        if lines:
            text += "\n| unit | words (coefficient) |\n|---|---|\n" + "\n".join(lines) + "\n"
        return text


def run_label(config: LabelConfig, model: ModelSource) -> LabelResult:
    """Label pairs, neuron PCs and head PCs (or heads by TextSpan) with words; accuracy against the word count.

    Args:
        config: the options (:class:`LabelConfig`).
        model: the loaded model, or a loader called once the inputs are checked.

    Returns:
        The :class:`LabelResult`. The pair OMP checkpoints after each head into ``OUT`` and resumes.

    Raises:
        ConfigError: bad options (``words`` above the vocabulary or d, ``components`` above H or head_dim).
        DataError: an unreadable vocabulary or labelled folder.
        OutputError: ``out`` holds an earlier result (without ``overwrite``) or cannot be written.

    Example:
        >>> import tempfile
        >>> from segclip.models import load_model
        >>> from segclip.data.synthetic import SYNTHETIC_CLASSES
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "words.txt").write_text("\\n".join(SYNTHETIC_CLASSES))
        >>> config = LabelConfig(out=folder / "out", units=("pairs",), vocabulary=folder / "words.txt", words=3,
        ...                      record=(1, 3), table_sparsity=3, progress=False)
        >>> result = run_label(config, load_model())
        >>> result.labelled, len(result.rows)
        ({'pairs': 4096}, 4096)
    """
    timer = Timer()
    check_out(config.out, "label", config.overwrite)
    read = read_labelled(config) if config.dataset_config() is not None else None
    model = resolve_model(model)
    info = model.info
    units = parse_units(config.units)
    vocabulary = read_vocabulary(config.vocabulary, config.vocabulary_size)
    if not 1 <= config.words <= min(len(vocabulary), info.embed_dim):
        raise ConfigError(f"--words must be between 1 and min(vocabulary size {len(vocabulary)}, d = "
                          f"{info.embed_dim}).")
    if "neurons" in units and not 1 <= config.components <= info.heads or \
            "heads" in units and not 1 <= config.components <= info.head_dim:
        raise ConfigError(f"--components must be between 1 and {info.heads} (H, for neurons) and "
                          f"{info.head_dim} (head dim, for heads), got {config.components}.")
    record = sorted({r for r in config.record if 1 <= r <= config.words}) or [config.words]
    table_sparsity = min(config.table_sparsity, config.words)
    solved = sorted(set(record) | {table_sparsity})  # sparsities whose coefficients OMP returns
    words = word_dictionary(model, vocabulary, config.dictionary, config.word_templates)
    raw_words = words if config.dictionary == "raw" and config.word_templates == "single" else \
        encode_classes(model, vocabulary, "single").to(model.device, torch.float32)  # TextSpan's own recipe
    accuracy, stats, evaluation = {}, None, None
    if read is not None:
        evaluation = labelled_set(config, model, read)
        stats = statistics_for(config, model, evaluation.calibration)
    elif config.calibration_images is not None or config.statistics is not None:
        stats = statistics_for(config, model, list_images(config.calibration_images)[:config.limit]
                               if config.calibration_images else [])
    labels: dict[str, Any] = {}
    conditions = {"baseline": lambda trace: trace.output}
    seconds: dict[str, float] = {}
    rows: list[dict[str, Any]] = []
    textspan = config.head_labels == "textspan"
    labelled, names = {}, {}
    pcs = f" ({config.components} PC{'s' if config.components > 1 else ''})"
    for unit in units:
        begun = time.perf_counter()
        keys: list[dict[str, Any]] = []
        if unit == "pairs":
            checkpoint = config.out / "label-pairs.partial.safetensors"
            signs = None if stats is None else hashlib.sha256(stats.signs.cpu().numpy().tobytes()).hexdigest()
            key = json.dumps({"model": info.name, "weights": info.weights_hash, "words": config.words,
                              "record": solved, "signs": signs,
                              "dictionary": config.dictionary, "word_templates": config.word_templates,
                              "vocabulary": hashlib.sha256("\n".join(vocabulary).encode()).hexdigest()})
            labels[unit] = label_pairs(model.pool, stats, words, config.words, solved, checkpoint=checkpoint, key=key)
            checkpoint.unlink(missing_ok=True)
            conditions.update({f"pairs {j} words": sparse_text_condition(model.pool, stats, words, labels[unit][0],
                                                                         labels[unit][1][j]) for j in record})
            keys = [{"neuron": n, "head": h, "component": ""} for n in range(info.neurons) for h in range(info.heads)]
        elif unit == "heads" and textspan:
            rounds = min(config.words, info.head_dim, info.embed_dim)
            spans = text_span(model.pool, stats, raw_words, rounds, config.pc_samples)
            labels[unit] = spans.index
            conditions.update({f"heads {j} words": text_span_condition(model.pool, stats, spans, j)
                               for j in record if j <= rounds})
            shares = (spans.variance / spans.total_variance.clamp_min(1e-300)[:, None]).cpu()
            rows += [{"unit": "head", "neuron": "", "head": h, "component": "textspan",
                      "words": " ".join(f"{vocabulary[w]}({100 * v:.1f}%)" for w, v in zip(chosen, share))}
                     for h, (chosen, share) in enumerate(zip(spans.index[:, :config.table].tolist(),
                                                             shares[:, :config.table].tolist()))]
        else:
            components = principal_components(model.pool, stats, unit, config.components, config.pc_samples)
            labels[unit] = label_components(model.pool, components, words, config.words, solved)
            conditions.update({f"{unit} {j} words": component_text_condition(
                model.pool, stats, components, words, labels[unit][0], labels[unit][1][j]) for j in record})
            count = info.neurons if unit == "neurons" else info.heads
            keys = [{"neuron": u if unit == "neurons" else "", "head": u if unit == "heads" else "",
                     "component": p + 1} for u in range(count) for p in range(config.components)]
        labelled[unit] = info.heads if unit == "heads" and textspan else \
            labels[unit][0].shape[0] * labels[unit][0].shape[1]
        names[unit] = unit + ("" if unit == "pairs" else " (TextSpan)" if unit == "heads" and textspan else pcs)
        if isinstance(labels[unit], tuple):  # OMP: each unit's top words by |coefficient|
            rows += [{"unit": unit[:-1], **key, "words": text}
                     for key, text in zip(keys, _word_lists(vocabulary, labels[unit][0],
                                                            labels[unit][1][table_sparsity], config.table))]
        seconds[unit] = round(time.perf_counter() - begun, 3)
    curves = {}
    if evaluation is not None:
        accuracy = evaluate(config, model, "label", conditions, evaluation)
        curves = {names[unit]: ([j for j in record if f"{unit} {j} words" in accuracy],
                                [accuracy[f"{unit} {j} words"] for j in record if f"{unit} {j} words" in accuracy])
                  for unit in units}
    results = {"accuracy": accuracy, "vocabulary": len(vocabulary), "words_per_unit": config.words,
               "dictionary": {"authors": "word embeddings minus their vocabulary mean, each dimension divided by its "
                                         "norm over the vocabulary (the authors' sparse_decomposition.py)",
                              "raw": "unit-norm word embeddings"}[config.dictionary] + f" ({config.dictionary}), "
                             f"words embedded with the {config.word_templates} templates",
               "table_sparsity": table_sparsity, "labelled": labelled, "omp_seconds": seconds,
               "signs": "calibration" if stats is not None else "+1 (no statistics)",
               **({"dataset": evaluation.description} if evaluation is not None else {})}
    if stats is not None and set(units) - {"pairs"}:
        results["principal_components"] = {"per_unit": config.components,
                                           "neurons": pc_source(config.pc_samples, stats),
                                           "heads": pc_source(config.pc_samples, stats) if not textspan else
                                           "TextSpan over the covariance of " + (
                                               f"all {stats.count} images" if config.pc_samples == "all" else
                                               f"each head's top {min(stats.top_k, stats.count)} images by "
                                               "distance from its mean over all images (A.2's rows)")}
    return LabelResult("label", results, rows, analysis_provenance(model, config, timer(), "label"),
                       accuracy=accuracy, curves=curves, labelled=labelled, vocabulary_size=len(vocabulary),
                       title=f"Sparse text decomposition ({info.name})")
