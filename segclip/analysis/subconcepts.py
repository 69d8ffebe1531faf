"""``segclip analyze subconcepts``: pairs whose top images are a coherent subset of their neuron's concept (paper A.3).

The paper found by hand that a 'butterfly' neuron's pair with one head is 'butterfly clothing'. Here every pair
(n, h) is compared with its neuron n through their top images (``t`` each, from the statistics), with the unit-norm
image embeddings e_i and the neuron's centred contribution size rho_n(i) = |r[n](i) - mean r[n]| =
sqrt(d^T G_n d), d = alpha[n, :](i) - mean alpha[n, :] (G_n the neuron's Gram of pair directions), computed by
tracing those images once:

- overlap: |T(n, h) & T(n)| / t, the share of the pair's top images that are also the neuron's;
- response: mean rho_n over T(n, h) / mean rho_n over T(n): do the pair's images still drive the neuron?
- spread: mean squared distance of the pair's embeddings to their centroid (inertia / t), and the neuron's;
- distance: |c(n, h) - c(n)| between the centroids of the pair's and the neuron's top-image embeddings.

A pair is a sub-concept when its images drive the neuron (response >= ``min_response``), are not simply the neuron's
own top images (overlap <= ``max_overlap``), are at least as coherent (spread <= ``max_spread`` x the neuron's) and
lie elsewhere (distance >= ``min_distance``); hits are ranked by distance x response. Each hit is labelled by OMP
(:func:`segclip.analysis.omp.omp`) of the centroid difference c(n, h) - c(n) (unit norm) over the word embeddings:
what the pair's images have that the neuron's do not.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from segclip.config import (
    Config,
    ShortRepr,
    check_figure_options,
    check_positive,
    dpi_option,
    figure_format_option,
    option,
)
from segclip.errors import ConfigError, DataError, OutputError
from segclip.io import atomic_write_csv, provenance, write_result
from segclip.models.loading import ModelSource, resolve_model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SubconceptsConfig(Config):
    """Options of ``segclip analyze subconcepts``.

    Raises:
        ConfigError: an option out of range (the message names it).
    """

    statistics: Path = option(help="statistics file of `segclip calibrate` (*.statistics.safetensors).", metavar="S")
    images: Path = option(help="the image folder the statistics were computed on.", metavar="DIR")
    out: Path = option(help="output folder (subconcepts.json, subconcepts.csv, montages/).", metavar="OUT")
    vocabulary: Path | None = option(None, help="word file, one per line (default: the most common English words, "
                                                "wordfreq).")
    vocabulary_size: int = option(30000, help="words from wordfreq without --vocabulary (default: 30000).")
    dictionary: str = option("authors", choices=("authors", "raw"),
                             help="OMP dictionary: authors (word embeddings minus their vocabulary mean, each "
                                  "dimension divided by its norm over the vocabulary, as the paper) or raw (unit-norm "
                                  "embeddings) (default: authors).")
    word_templates: str = option("openai", choices=("openai", "maskclip", "single"),
                                 help="templates the words are embedded with (default: openai, the authors' 80).")
    images_per_unit: int = option(10, aliases=("--top-images",), help="t, top images compared per unit (at most the statistics' list; default 10).")
    min_response: float = option(0.5, help="least response of the neuron to the pair's images, relative to its own "
                                           "top images (default: 0.5).")
    max_overlap: float = option(0.8, help="most top images shared with the neuron, as a fraction (default: 0.8).")
    max_spread: float = option(1.0, help="most spread of the pair's embeddings, relative to the neuron's (default 1).")
    min_distance: float = option(0.05, help="least distance between the two centroids of unit embeddings "
                                            "(default: 0.05).")
    words: int = option(5, help="words per hit (OMP of the centroid difference; default: 5).")
    max_hits: int = option(100, help="hits kept (best first), each with a montage (default: 100).")
    tile: int = option(64, help="montage tile side in pixels (default: 64).")
    batch_size: int = option(16, help="images per forward pass (default: 16).")
    overwrite: bool = option(False, help="replace an existing subconcepts.json in --out.")
    figure_format: str = figure_format_option()
    dpi: int = dpi_option()

    def __post_init__(self) -> None:
        super().__post_init__()  # field types (segclip.config.Config)
        for name in ("min_response", "max_spread", "min_distance"):
            if getattr(self, name) < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be at least 0, got {getattr(self, name)}.")
        if not 0 <= self.max_overlap <= 1:
            raise ConfigError(f"--max-overlap must be in [0, 1], got {self.max_overlap}.")
        check_positive(self, "vocabulary_size", "images_per_unit", "words", "max_hits", "tile", "batch_size")
        check_figure_options(self)


@dataclass(frozen=True)
class Subconcept:
    """One hit: pair (neuron, head), its measures (see the module), its words and montage."""

    rank: int
    neuron: int
    head: int
    score: float
    overlap: float
    response: float
    spread: float
    neuron_spread: float
    distance: float
    words: list[tuple[str, float]]
    montage: Path


@dataclass(frozen=True)
class SubconceptsResult(ShortRepr):
    """What :func:`run_subconcepts` found and wrote.

    Attributes:
        hits: the sub-concepts, best first (at most ``max_hits``); found: hits before that cut.
        pairs: pairs examined (N H); images: distinct top images traced.
        json, csv: the files written; seconds: run time.
    """

    hits: list[Subconcept]
    found: int
    pairs: int
    images: int
    json: Path
    csv: Path
    seconds: float

    def summary(self) -> str:
        lines = [f"{self.found} sub-concept pairs of {self.pairs:,} ({len(self.hits)} kept, best first):"]
        lines += [f"  {hit.rank:3d}. pair {hit.neuron}:{hit.head} (neuron {hit.neuron}) score {hit.score:.3f}: "
                  f"{hit.words}" for hit in self.hits[:10]]
        return "\n".join(lines) + "\n"

    def write(self, out: str | Path) -> list[Path]:
        """The files are written by :func:`run_subconcepts` itself (with its montages); this lists them."""
        return [self.json, self.csv]


@dataclass
class SubconceptScores:
    """The measures of every pair: (N, H) tensors, ``neuron_spread`` (N,); ``hit`` (N, H) bool."""

    overlap: torch.Tensor
    response: torch.Tensor
    spread: torch.Tensor
    neuron_spread: torch.Tensor
    distance: torch.Tensor
    score: torch.Tensor
    hit: torch.Tensor
    difference: torch.Tensor  # (N, H, d) c(n, h) - c(n)


def _spread(embeddings: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Centroid and mean squared distance to it over dim 0: (t, ..., d) -> (..., d), (...)."""
    centroid = embeddings.mean(0)
    return centroid, ((embeddings - centroid) ** 2).sum(-1).mean(0)


@torch.no_grad()
def score_subconcepts(neuron_images: torch.Tensor, pair_images: torch.Tensor, embeddings: torch.Tensor,
                      responses: torch.Tensor, *, min_response: float = 0.5, max_overlap: float = 0.8,
                      max_spread: float = 1.0, min_distance: float = 0.05) -> SubconceptScores:
    """Overlap, response, spread and centroid distance of every pair against its neuron; the hits.

    Args:
        neuron_images: (t, N) each neuron's top images (indices into ``embeddings``).
        pair_images: (t, N, H) each pair's top images.
        embeddings: (I, d) unit-norm image embeddings (rows of images not listed are unused).
        responses: (I, N) rho_n(i), the neuron's centred contribution size per image.
        min_response, max_overlap, max_spread, min_distance: the hit criteria (:class:`SubconceptsConfig`).

    Returns:
        The :class:`SubconceptScores`; ``score`` = distance x response, 0 where not a hit.

    Example:
        >>> e = torch.nn.functional.normalize(torch.eye(4) + 0.1, dim=-1)
        >>> neuron = torch.tensor([[0], [1]])  # neuron 0: images 0, 1
        >>> pairs = torch.tensor([[[0, 1]], [[1, 2]]])  # head 0: the neuron's images; head 1: images 1, 2
        >>> s = score_subconcepts(neuron, pairs, e, torch.ones(4, 1), max_spread=2.0)
        >>> s.overlap.tolist(), s.hit.tolist()
        ([[1.0, 0.5]], [[False, True]])
    """
    t, n = neuron_images.shape
    shared = (pair_images[:, None] == neuron_images[None, :, :, None]).any(1)  # (t_p, N, H)
    overlap = shared.float().mean(0)
    columns = torch.arange(n)
    own = responses[neuron_images, columns].mean(0)  # (N,)
    theirs = responses[pair_images, columns[None, :, None]].mean(0)  # (N, H)
    response = theirs / own.clamp_min(1e-12)[:, None]
    neuron_centroid, neuron_spread = _spread(embeddings[neuron_images])  # (N, d), (N,)
    pair_centroid, spread = _spread(embeddings[pair_images])  # (N, H, d), (N, H)
    difference = pair_centroid - neuron_centroid[:, None]
    distance = difference.norm(dim=-1)
    hit = ((response >= min_response) & (overlap <= max_overlap) & (spread <= max_spread * neuron_spread[:, None])
           & (distance >= min_distance))
    return SubconceptScores(overlap=overlap, response=response, spread=spread, neuron_spread=neuron_spread,
                            distance=distance, score=torch.where(hit, distance * response, 0.0), hit=hit,
                            difference=difference)


class _Embeddings:
    """Accumulator for ``run_pass``: unit-norm embeddings and rho_n of the traced images, by pass position."""

    def __init__(self, pool, count: int, mean_scalars: torch.Tensor):
        from segclip.analysis.statistics import pair_constants

        self.gram = pair_constants(pool)["gram"].cpu()  # (N, H, H)
        self.mean = mean_scalars.double().cpu()
        self.embeddings = torch.zeros(count, pool.embed_dim)
        self.responses = torch.zeros(count, pool.neurons)

    def update(self, trace, first: int) -> None:
        out = trace.output.double().cpu()
        self.embeddings[first:first + len(trace)] = torch.nn.functional.normalize(out, dim=-1).float()
        centred = trace.pair_scalars.double().cpu() - self.mean  # (B, N, H)
        rho = torch.einsum("bnh,nhk,bnk->bn", centred, self.gram, centred).clamp_min(0).sqrt()
        self.responses[first:first + len(trace)] = rho.float()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"embeddings": self.embeddings, "responses": self.responses}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.embeddings, self.responses = state["embeddings"].clone(), state["responses"].clone()


def run_subconcepts(config: SubconceptsConfig, model: ModelSource) -> SubconceptsResult:
    """Find, label and rank the sub-concept pairs of every neuron; write JSON, CSV and a montage per hit.

    Args:
        config: the options (:class:`SubconceptsConfig`).
        model: the :class:`~segclip.models.loading.CLIPResNet` the statistics were computed with, or a loader
            called once the inputs are checked.

    Returns:
        The :class:`SubconceptsResult`.

    Raises:
        ConfigError: statistics of another model.
        CacheError: unreadable statistics.
        DataError: images named in the statistics missing from ``config.images``; a bad vocabulary file.
        OutputError: ``subconcepts.json`` exists in ``config.out`` and ``overwrite`` is off; a failed write.

    Example:
        >>> import tempfile
        >>> from pathlib import Path
        >>> import numpy as np
        >>> from PIL import Image
        >>> from segclip.analysis.statistics import collect_statistics
        >>> from segclip.models import load_model
        >>> model, root = load_model(), Path(tempfile.mkdtemp())
        >>> (root / "images").mkdir()
        >>> for i in range(6):
        ...     Image.fromarray(np.full((64, 64, 3), 40 * i, np.uint8)).save(root / "images" / f"{i}.png")
        >>> stats = collect_statistics(model, sorted((root / "images").iterdir()), top_k=3, progress=False)
        >>> stats.save(root / "s.safetensors")
        >>> (root / "words.txt").write_text("ball\\nstar\\nsky\\n")
        14
        >>> result = run_subconcepts(SubconceptsConfig(statistics=root / "s.safetensors", images=root / "images",
        ...                          out=root / "sub", vocabulary=root / "words.txt", words=2), model)
        >>> result.pairs, result.json.name
        (4096, 'subconcepts.json')
    """
    from segclip.analysis.omp import omp, read_vocabulary, word_dictionary
    from segclip.analysis.statistics import Statistics, check_model_statistics
    from segclip.analysis.stream import run_pass
    from segclip.data.images import read_image
    from segclip.data.preprocess import centre_crop
    from segclip.viz.plots import montage

    start = time.perf_counter()
    out = Path(config.out)
    if (out / "subconcepts.json").exists() and not config.overwrite:
        raise OutputError(f"{out / 'subconcepts.json'} exists; pass --overwrite to replace it, or choose another "
                          "--out.")
    stats = Statistics.load(config.statistics)
    model = resolve_model(model)
    names = check_model_statistics(stats, model, config.statistics)
    vocabulary = read_vocabulary(config.vocabulary, config.vocabulary_size)
    atoms = min(config.words, len(vocabulary), model.info.embed_dim)
    t = min(config.images_per_unit, stats.pair_top_images.shape[0], stats.neuron_top_images.shape[0])
    neuron_images, pair_images = stats.neuron_top_images[:t].cpu(), stats.pair_top_images[:t].cpu()
    traced = torch.cat([neuron_images.flatten(), pair_images.flatten()]).unique()  # sorted
    folder = Path(config.images)
    paths = [folder / names[i] for i in traced.tolist()]
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise DataError(f"--images {folder} lacks {len(missing)} images named in the statistics ({missing[:5]}); "
                        "pass the folder `segclip calibrate` read.")
    collected = _Embeddings(model.pool, len(paths), stats.mean_scalars)
    run_pass(model, paths, collected, key={"kind": "subconcepts"}, batch_size=config.batch_size,
             description="subconcepts")
    position = torch.full((stats.count,), -1, dtype=torch.long)
    position[traced] = torch.arange(len(traced))
    scores = score_subconcepts(position[neuron_images], position[pair_images], collected.embeddings,
                               collected.responses, min_response=config.min_response, max_overlap=config.max_overlap,
                               max_spread=config.max_spread, min_distance=config.min_distance)
    found = int(scores.hit.sum())
    heads = scores.hit.shape[1]
    ranked = scores.score.flatten().argsort(descending=True, stable=True)[:min(found, config.max_hits)].tolist()
    chosen = [divmod(i, heads) for i in ranked]
    labels: list[list[tuple[str, float]]] = []
    if chosen:
        words = word_dictionary(model, vocabulary, config.dictionary, config.word_templates).float().cpu()
        targets = torch.nn.functional.normalize(torch.stack([scores.difference[n, h] for n, h in chosen]).float(),
                                                dim=-1)
        index, coefficients = omp(targets, words, atoms)
        for row, coef in zip(index.tolist(), coefficients[atoms].tolist()):
            pairs = sorted(zip(row, coef), key=lambda x: -abs(x[1]))
            labels.append([(vocabulary[w], round(c, 4)) for w, c in pairs])
    thumbs = lambda images: [centre_crop(read_image(folder / names[i]), config.tile)  # noqa: E731
                             for i in images.tolist()]
    hits = []
    for rank, ((n, h), words_of) in enumerate(zip(chosen, labels), 1):
        text = ", ".join(w for w, _ in words_of[:3])
        path = montage(out / "montages" / f"neuron{n}_head{h}.png", {
            f"neuron {n}": thumbs(neuron_images[:, n]), f"pair {n}:{h}\n{text}": thumbs(pair_images[:, n, h])},
            tile=config.tile)
        hits.append(Subconcept(rank=rank, neuron=n, head=h, score=float(scores.score[n, h]),
                               overlap=float(scores.overlap[n, h]), response=float(scores.response[n, h]),
                               spread=float(scores.spread[n, h]), neuron_spread=float(scores.neuron_spread[n]),
                               distance=float(scores.distance[n, h]), words=words_of, montage=path))
    rows = [{**{k: v for k, v in dataclasses.asdict(hit).items() if k not in ("words", "montage")},
             "words": " ".join(f"{w}({c:+.3f})" for w, c in hit.words), "montage": str(hit.montage.relative_to(out))}
            for hit in hits]
    seconds = time.perf_counter() - start
    json_path = write_result(
        out / "subconcepts.json",
        provenance(model.info, config, analysis="subconcepts", seconds=round(seconds, 3), images_traced=len(paths),
                   top_images=t, vocabulary=len(vocabulary), dictionary=config.dictionary,
                   word_templates=config.word_templates),
        {"found": found, "pairs": int(scores.hit.numel()),
         "hits": [{**dataclasses.asdict(hit), "words": [list(w) for w in hit.words],
                   "montage": str(hit.montage.relative_to(out))} for hit in hits]})
    csv_path = atomic_write_csv(out / "subconcepts.csv", rows)
    log.info("sub-concepts: %d of %d pairs (%d kept) in %.1f s", found, scores.hit.numel(), len(hits), seconds)
    return SubconceptsResult(hits=hits, found=found, pairs=int(scores.hit.numel()), images=len(paths),
                             json=json_path, csv=csv_path, seconds=round(seconds, 3))
