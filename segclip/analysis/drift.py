"""Drift statistics of concept scores across groups, in the vocabulary of the drift-detection libraries.

For ``shift`` (paper section 5.2), besides the point-biserial correlation with ground truth, per group:

- the mean score with a Student-t confidence interval (:func:`group_means`);
- two-sample tests of the group against a reference group, each a :class:`DriftTest` whose fields carry the
  names Evidently and alibi-detect use: ``drift_detected`` (Evidently; alibi-detect's ``is_drift``),
  ``p_value``, ``threshold`` (the significance level: alibi-detect's ``p_val``, Evidently's
  ``stattest_threshold``), ``distance`` (alibi-detect's name for the test statistic) and ``method``:

  * ``ks``: two-sample Kolmogorov-Smirnov on the scores (Evidently's ``ks`` stattest, alibi-detect's ``KSDrift``);
  * ``mmd``: maximum mean discrepancy with a Gaussian RBF kernel and a permutation test on the pair-contribution
    vectors (alibi-detect's ``MMDDrift``);
  * ``classifier``: a domain classifier (logistic regression, out-of-fold predictions) telling the group from the
    reference; AUROC as the distance, drift when its Mann-Whitney p-value is below the threshold (alibi-detect's
    ``ClassifierDrift``, Evidently's domain-classifier drift).

Every function is pure: arrays in, frozen dataclasses out; randomness only from an explicit seed.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import stats

from segclip.config import Config, option
from segclip.errors import ConfigError

METHODS = ("ks", "mmd", "classifier")
STATTEST_NAMES = {"ks": "K-S p_value", "mmd": "MMD permutation p_value",
                  "classifier": "domain classifier AUROC p_value"}


@dataclass(frozen=True)
class GroupMean:
    """Mean score of one group with a two-sided Student-t confidence interval (NaN bounds for fewer than 2)."""

    group: str
    count: int
    mean: float
    ci_low: float
    ci_high: float
    confidence: float


@dataclass(frozen=True)
class DriftTest:
    """One two-sample test of a group (``current``) against the reference group.

    Attributes:
        group, reference: the tested and the reference group.
        method: ``ks``, ``mmd`` or ``classifier``.
        stattest_name: Evidently-style name of what ``p_value`` is.
        distance: the statistic (KS D; unbiased MMD^2; AUROC of the domain classifier).
        p_value: its p-value.
        threshold: the significance level; ``drift_detected`` is ``p_value < threshold``.
        drift_detected: the decision.
        details: method parameters (kernel bandwidth, permutations, folds, sample sizes).
    """

    group: str
    reference: str
    method: str
    stattest_name: str
    distance: float
    p_value: float
    threshold: float
    drift_detected: bool
    details: dict[str, Any] = field(default_factory=dict)


def _check(threshold: float) -> None:
    if not 0 < threshold < 1:
        raise ValueError(f"threshold must be in (0, 1), got {threshold}")


def group_means(scores: np.ndarray, groups: list[str], confidence: float = 0.95) -> list[GroupMean]:
    """Per group (sorted) the mean score and its t interval: mean +- t_{(1+c)/2, n-1} * s / sqrt(n).

    Args:
        scores: (n,) scores.
        groups: n group keys.
        confidence: coverage of the interval.

    Returns:
        One :class:`GroupMean` per group, groups sorted.

    Example:
        >>> [round(g.mean, 2) for g in group_means(np.array([1., 2., 3., 5.]), ["a", "a", "b", "b"])]
        [1.5, 4.0]
    """
    scores = np.asarray(scores, dtype=np.float64)
    if len(scores) != len(groups):
        raise ValueError(f"{len(scores)} scores but {len(groups)} group keys")
    keys = np.asarray(groups, dtype=object)
    out = []
    for group in sorted(set(groups)):
        values = scores[keys == group]
        n, mean = len(values), float(values.mean())
        if n < 2:
            low = high = math.nan
        else:
            half = stats.t.ppf((1 + confidence) / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
            low, high = mean - half, mean + half
        out.append(GroupMean(group, n, mean, float(low), float(high), confidence))
    return out


def ks_statistic(reference: np.ndarray, current: np.ndarray) -> float:
    """sup_x |F_ref(x) - F_cur(x)| of the two empirical CDFs.

    Example:
        >>> ks_statistic(np.array([0., 1.]), np.array([2., 3.]))
        1.0
    """
    reference, current = np.sort(np.asarray(reference, np.float64)), np.sort(np.asarray(current, np.float64))
    points = np.concatenate([reference, current])
    f_ref = np.searchsorted(reference, points, side="right") / len(reference)
    f_cur = np.searchsorted(current, points, side="right") / len(current)
    return float(np.abs(f_ref - f_cur).max())


def ks_drift(reference: np.ndarray, current: np.ndarray, *, threshold: float = 0.05, group: str = "current",
             reference_name: str = "reference") -> DriftTest:
    """Two-sample Kolmogorov-Smirnov test of 1-D scores (p-value: scipy's ``ks_2samp``, exact for small samples).

    Example:
        >>> ks_drift(np.arange(30.), np.arange(30.) + 100).drift_detected
        True
    """
    _check(threshold)
    distance = ks_statistic(reference, current)
    p_value = float(stats.ks_2samp(reference, current).pvalue)
    return DriftTest(group, reference_name, "ks", STATTEST_NAMES["ks"], distance, p_value, threshold,
                     p_value < threshold, {"n_reference": len(reference), "n_current": len(current)})


def _squared_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum((x * x).sum(1)[:, None] + (y * y).sum(1)[None, :] - 2 * x @ y.T, 0)


def rbf_bandwidth(pooled: np.ndarray) -> float:
    """The median heuristic: sigma = median Euclidean distance between distinct points of the pooled sample."""
    d2 = _squared_distances(pooled, pooled)
    upper = d2[np.triu_indices(len(pooled), 1)]
    sigma = float(np.median(np.sqrt(upper))) if upper.size else 1.0
    return sigma if sigma > 0 else 1.0


def _mmd2_from_kernel(kernel: np.ndarray, first: np.ndarray, second: np.ndarray) -> float:
    """Unbiased MMD^2 of two index sets of a pooled kernel matrix (diagonals of the within blocks left out)."""
    m, n = len(first), len(second)
    kxx, kyy, kxy = kernel[np.ix_(first, first)], kernel[np.ix_(second, second)], kernel[np.ix_(first, second)]
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def mmd2_unbiased(reference: np.ndarray, current: np.ndarray, sigma: float) -> float:
    """Unbiased MMD^2 with the kernel k(a, b) = exp(-|a - b|^2 / (2 sigma^2)): (m, p), (n, p) -> float."""
    pooled = np.concatenate([reference, current]).astype(np.float64)
    kernel = np.exp(-_squared_distances(pooled, pooled) / (2 * sigma ** 2))
    m = len(reference)
    return _mmd2_from_kernel(kernel, np.arange(m), np.arange(m, len(pooled)))


def mmd_drift(reference: np.ndarray, current: np.ndarray, *, threshold: float = 0.05, n_permutations: int = 100,
              sigma: float | None = None, seed: int = 0, group: str = "current",
              reference_name: str = "reference") -> DriftTest:
    """MMD permutation test on feature vectors (e.g. each image's pair-contribution vector of a concept).

    p = (1 + #{permutations with MMD^2 >= observed}) / (1 + n_permutations), the pooled sample relabelled at
    random each time (a valid p-value: it is never 0).

    Args:
        reference, current: (m, p) and (n, p) features (1-D arrays are read as p = 1); m, n >= 2.
        threshold: significance level.
        n_permutations: random relabellings.
        sigma: RBF bandwidth (default: :func:`rbf_bandwidth` of the pooled sample).
        seed: seed of the permutations.
        group, reference_name: names recorded in the result.

    Returns:
        The :class:`DriftTest` (``distance`` = unbiased MMD^2).

    Raises:
        ValueError: fewer than 2 samples on a side, or a bad threshold.
    """
    _check(threshold)
    x = np.asarray(reference, np.float64).reshape(len(reference), -1)
    y = np.asarray(current, np.float64).reshape(len(current), -1)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("the MMD test needs at least 2 samples on each side")
    pooled = np.concatenate([x, y])
    sigma = rbf_bandwidth(pooled) if sigma is None else sigma
    kernel = np.exp(-_squared_distances(pooled, pooled) / (2 * sigma ** 2))
    m = len(x)
    observed = _mmd2_from_kernel(kernel, np.arange(m), np.arange(m, len(pooled)))
    rng = np.random.default_rng(seed)
    exceed = 0
    for _ in range(n_permutations):
        order = rng.permutation(len(pooled))
        exceed += _mmd2_from_kernel(kernel, order[:m], order[m:]) >= observed
    p_value = (1 + exceed) / (1 + n_permutations)
    return DriftTest(group, reference_name, "mmd", STATTEST_NAMES["mmd"], observed, p_value, threshold,
                     p_value < threshold, {"kernel": "gaussian_rbf", "sigma": sigma, "n_permutations": n_permutations,
                                           "seed": seed, "n_reference": m, "n_current": len(y)})


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve from ranks (ties count half): P(score of a 1 > score of a 0).

    Example:
        >>> auroc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]))
        0.75
    """
    labels = np.asarray(labels).astype(bool)
    ranks = stats.rankdata(scores)
    positives, negatives = labels.sum(), (~labels).sum()
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def classifier_drift(reference: np.ndarray, current: np.ndarray, *, threshold: float = 0.05, n_folds: int = 5,
                     seed: int = 0, group: str = "current", reference_name: str = "reference") -> DriftTest:
    """Domain-classifier test: can a classifier tell ``current`` from ``reference``?

    A standardised logistic regression is fitted in ``n_folds`` stratified folds; its out-of-fold probabilities
    give the AUROC (0.5: indistinguishable). The p-value is the one-sided Mann-Whitney U test that current samples
    score higher (AUROC = U / (m n)).

    Args:
        reference, current: (m, p) and (n, p) features (1-D arrays are read as p = 1).
        threshold: significance level.
        n_folds: cross-validation folds (at most the smaller sample size).
        seed: seed of the fold split.
        group, reference_name: names recorded in the result.

    Returns:
        The :class:`DriftTest` (``distance`` = AUROC).

    Raises:
        ValueError: a side with fewer than 2 samples, or a bad threshold.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_predict
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    _check(threshold)
    x = np.asarray(reference, np.float64).reshape(len(reference), -1)
    y = np.asarray(current, np.float64).reshape(len(current), -1)
    if len(x) < 2 or len(y) < 2:
        raise ValueError("the classifier test needs at least 2 samples on each side")
    folds = max(2, min(n_folds, len(x), len(y)))
    features, labels = np.concatenate([x, y]), np.r_[np.zeros(len(x), int), np.ones(len(y), int)]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    probability = cross_val_predict(model, features, labels, method="predict_proba",
                                    cv=StratifiedKFold(folds, shuffle=True, random_state=seed))[:, 1]
    distance = auroc(labels, probability)
    p_value = float(stats.mannwhitneyu(probability[labels == 1], probability[labels == 0],
                                       alternative="greater").pvalue)
    return DriftTest(group, reference_name, "classifier", STATTEST_NAMES["classifier"], distance, p_value,
                     threshold, p_value < threshold,
                     {"classifier": "logistic_regression", "n_folds": folds, "seed": seed, "n_reference": len(x),
                      "n_current": len(y)})


@dataclass(frozen=True)
class DriftConfig(Config):
    """The drift options of ``shift``.

    Example:
        >>> DriftConfig(drift_methods=("ks", "psi"))
        Traceback (most recent call last):
        ...
        segclip.errors.ConfigError: --drift-methods: unknown ['psi']; use ks, mmd, classifier.
    """

    reference: str | None = option(None, help="reference group of the drift tests (default: the first group in "
                                              "sorted order, e.g. the earliest model year)")
    drift_methods: tuple[str, ...] = option(METHODS, help="two-sample tests against the reference group: ks "
                                                          "(scores), mmd and classifier (pair-contribution vectors)")
    drift_threshold: float = option(0.05, help="significance level of every drift test (drift_detected = p_value "
                                               "< threshold)")
    confidence: float = option(0.95, help="coverage of the per-group mean intervals")
    permutations: int = option(100, help="permutations of the MMD test")
    seed: int = option(0, help="seed of the MMD permutations and the classifier's folds")

    def __post_init__(self) -> None:
        super().__post_init__()  # field types (segclip.config.Config)
        unknown = sorted(set(self.drift_methods) - set(METHODS))
        if unknown:
            raise ConfigError(f"--drift-methods: unknown {unknown}; use {', '.join(METHODS)}.")
        for name in ("drift_threshold", "confidence"):
            if not 0 < getattr(self, name) < 1:
                raise ConfigError(f"--{name.replace('_', '-')} must be between 0 and 1, got {getattr(self, name)}.")
        if self.permutations < 1:
            raise ConfigError(f"--permutations must be at least 1, got {self.permutations}.")

    def report(self, scores: np.ndarray, groups: list[str], features: np.ndarray | None = None) -> DriftReport:
        """:func:`drift_report` with these options (reference: the given one, else the first sorted group)."""
        return drift_report(scores, groups, self.reference or sorted(set(groups))[0], features=features,
                            methods=self.drift_methods, threshold=self.drift_threshold, confidence=self.confidence,
                            n_permutations=self.permutations, seed=self.seed)


@dataclass(frozen=True)
class DriftReport:
    """Group means and every group's tests against the reference group."""

    reference: str
    means: list[GroupMean]
    tests: list[DriftTest]

    def to_dict(self) -> dict[str, Any]:
        return {"reference": self.reference, "means": [asdict(m) for m in self.means],
                "tests": [asdict(t) for t in self.tests]}


def drift_report(scores: np.ndarray, groups: list[str], reference: str, *, features: np.ndarray | None = None,
                 methods: tuple[str, ...] = METHODS, threshold: float = 0.05, confidence: float = 0.95,
                 n_permutations: int = 100, seed: int = 0) -> DriftReport:
    """Means per group and the tests of every other group against ``reference``.

    Args:
        scores: (n,) concept scores (the KS test and the classifier run on them when ``features`` is None).
        groups: n group keys.
        reference: the reference group (e.g. the earliest model year).
        features: optional (n, p) pair-contribution vectors for the MMD and classifier tests.
        methods: which tests (``ks``, ``mmd``, ``classifier``).
        threshold: significance level of every test.
        confidence: coverage of the mean intervals.
        n_permutations, seed: of the MMD test (the seed also splits the classifier's folds).

    Returns:
        The :class:`DriftReport` (tests sorted by group, then method).

    Raises:
        ValueError: an unknown method, a reference group that does not occur, or mismatched lengths.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> scores = np.r_[rng.normal(0, 1, 40), rng.normal(3, 1, 40)]
        >>> report = drift_report(scores, ["a"] * 40 + ["b"] * 40, "a", methods=("ks",))
        >>> [(t.group, t.method, t.drift_detected) for t in report.tests]
        [('b', 'ks', True)]
    """
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown drift methods {unknown}; use {', '.join(METHODS)}")
    scores = np.asarray(scores, np.float64)
    keys = np.asarray(groups, dtype=object)
    if reference not in set(groups):
        raise ValueError(f"reference group '{reference}' does not occur; groups are {sorted(set(groups))}")
    vectors = scores[:, None] if features is None else np.asarray(features, np.float64).reshape(len(scores), -1)
    base = keys == reference
    tests = []
    for group in sorted(set(groups) - {reference}):
        mask = keys == group
        names = {"group": group, "reference_name": reference}
        for method in METHODS:
            if method not in methods:
                continue
            if method == "ks":
                tests.append(ks_drift(scores[base], scores[mask], threshold=threshold, **names))
            elif method == "mmd":
                tests.append(mmd_drift(vectors[base], vectors[mask], threshold=threshold,
                                       n_permutations=n_permutations, seed=seed, **names))
            else:
                tests.append(classifier_drift(vectors[base], vectors[mask], threshold=threshold, seed=seed, **names))
    return DriftReport(reference, group_means(scores, groups, confidence), tests)
