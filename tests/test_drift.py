"""Drift statistics against scipy / scikit-learn and brute force, on planted shifts and same-distribution samples."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from scipy.spatial.distance import pdist
from sklearn.metrics import roc_auc_score
from sklearn.metrics.pairwise import rbf_kernel

from segclip.analysis.drift import (
    auroc,
    classifier_drift,
    drift_report,
    group_means,
    ks_drift,
    ks_statistic,
    mmd2_unbiased,
    mmd_drift,
    rbf_bandwidth,
)


def test_group_means_against_scipy():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=37)
    groups = [["2007", "2009", "2012"][i % 3] for i in range(37)]
    means = group_means(scores, groups, confidence=0.9)
    assert [m.group for m in means] == ["2007", "2009", "2012"]
    for m in means:
        values = scores[np.array(groups) == m.group]
        low, high = stats.t.interval(0.9, len(values) - 1, loc=values.mean(), scale=stats.sem(values))
        assert m.count == len(values) and m.mean == pytest.approx(values.mean())
        assert (m.ci_low, m.ci_high) == (pytest.approx(low), pytest.approx(high))
    single = group_means(np.array([1.0, 2.0, 3.0]), ["a", "a", "b"])[1]
    assert single.count == 1 and np.isnan(single.ci_low)


def test_ks_against_scipy_and_brute_force():
    rng = np.random.default_rng(1)
    for trial in range(5):
        a, b = rng.normal(size=20 + trial), np.round(rng.normal(0.3, 1, 15), 1)  # rounding plants ties
        grid = np.concatenate([a, b])
        brute = max(abs((a <= x).mean() - (b <= x).mean()) for x in grid)
        assert ks_statistic(a, b) == pytest.approx(brute) and ks_statistic(b, a) == pytest.approx(brute)
        assert ks_statistic(a, b) == pytest.approx(stats.ks_2samp(a, b).statistic)
        assert ks_drift(a, b).p_value == pytest.approx(stats.ks_2samp(a, b).pvalue)


def false_positive_rate(test, trials=40):
    rng = np.random.default_rng(7)
    return np.mean([test(rng.normal(size=(30, 3)), rng.normal(size=(30, 3)), seed).drift_detected
                    for seed in range(trials)])


def test_ks_planted_shift_and_no_drift():
    rng = np.random.default_rng(2)
    shifted = ks_drift(rng.normal(size=60), rng.normal(1.0, 1, size=60), group="2012", reference_name="2007")
    assert shifted.drift_detected and shifted.p_value < 0.01 and (shifted.group, shifted.reference) == ("2012", "2007")
    assert false_positive_rate(lambda a, b, s: ks_drift(a[:, 0], b[:, 0])) <= 0.15


def test_mmd_against_brute_force():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(9, 4)), rng.normal(0.5, 1, size=(7, 4))
    sigma = rbf_bandwidth(np.concatenate([x, y]))
    assert sigma == pytest.approx(np.median(pdist(np.concatenate([x, y]))))
    gamma = 1 / (2 * sigma ** 2)
    kxx, kyy, kxy = rbf_kernel(x, x, gamma=gamma), rbf_kernel(y, y, gamma=gamma), rbf_kernel(x, y, gamma=gamma)
    brute = (sum(kxx[i, j] for i in range(9) for j in range(9) if i != j) / (9 * 8)
             + sum(kyy[i, j] for i in range(7) for j in range(7) if i != j) / (7 * 6) - 2 * kxy.mean())
    assert mmd2_unbiased(x, y, sigma) == pytest.approx(brute)
    assert mmd_drift(x, y, sigma=sigma, n_permutations=5).distance == pytest.approx(brute)


def test_mmd_planted_shift_and_no_drift():
    rng = np.random.default_rng(4)
    reference = rng.normal(size=(40, 8))
    current = rng.normal(size=(40, 8))
    current[:, 2] += 1.5  # a shift in one coordinate of the contribution vectors
    shifted = mmd_drift(reference, current, n_permutations=99)
    assert shifted.drift_detected and shifted.p_value == pytest.approx(0.01)  # no permutation reaches it
    assert shifted.details["n_permutations"] == 99 and shifted.method == "mmd"
    assert false_positive_rate(lambda a, b, s: mmd_drift(a, b, n_permutations=39, seed=s)) <= 0.15
    with pytest.raises(ValueError, match="at least 2"):
        mmd_drift(reference[:1], current)


def test_auroc_against_sklearn():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 2, 50)
    scores = np.round(rng.normal(size=50) + labels, 1)  # ties
    assert auroc(labels, scores) == pytest.approx(roc_auc_score(labels, scores))


def test_classifier_planted_shift_and_no_drift():
    rng = np.random.default_rng(6)
    reference, current = rng.normal(size=(50, 4)), rng.normal(size=(50, 4)) + np.array([1.2, 0, 0, 0])
    shifted = classifier_drift(reference, current)
    assert shifted.drift_detected and shifted.distance > 0.65
    assert false_positive_rate(lambda a, b, s: classifier_drift(a, b, seed=s)) <= 0.15


def test_report():
    rng = np.random.default_rng(8)
    scores = np.r_[rng.normal(0, 1, 30), rng.normal(0, 1, 30), rng.normal(2, 1, 30)]
    groups = ["2007"] * 30 + ["2009"] * 30 + ["2012"] * 30
    report = drift_report(scores, groups, "2007", n_permutations=49)
    assert [(t.group, t.method) for t in report.tests] == [(g, m) for g in ("2009", "2012")
                                                          for m in ("ks", "mmd", "classifier")]
    detected = {(t.group, t.method): t.drift_detected for t in report.tests}
    assert all(detected[("2012", m)] for m in ("ks", "mmd", "classifier"))
    assert not any(detected[("2009", m)] for m in ("ks", "mmd", "classifier"))
    assert report.to_dict()["tests"][0]["stattest_name"] == "K-S p_value"
    with pytest.raises(ValueError, match="does not occur"):
        drift_report(scores, groups, "1999")


def test_config_from_flags():
    from segclip.analysis.drift import DriftConfig
    from segclip.config import build_config
    from segclip.errors import ConfigError

    config = build_config(DriftConfig, {"drift-methods": "ks,mmd", "drift-threshold": "0.01", "permutations": "199"})
    assert config.drift_methods == ("ks", "mmd") and config.drift_threshold == 0.01
    rng = np.random.default_rng(9)
    report = config.report(np.r_[rng.normal(0, 1, 20), rng.normal(5, 1, 20)], ["2012"] * 20 + ["2000"] * 20)
    assert report.reference == "2000" and all(t.drift_detected and t.threshold == 0.01 for t in report.tests)
    assert [t.details.get("n_permutations") for t in report.tests] == [None, 199]
    with pytest.raises(ConfigError, match="--drift-threshold"):
        DriftConfig(drift_threshold=1.5)


def test_drift_plot(tmp_path):
    from PIL import Image

    from segclip.viz.drift import drift_plot

    rng = np.random.default_rng(10)
    groups = ["2000"] * 20 + ["2012"] * 20
    reports = {name: drift_report(np.r_[rng.normal(0, 1, 20), rng.normal(shift, 1, 20)], groups, "2000",
                                  methods=("ks",)) for name, shift in (("convertible", 3.0), ("yellow", 0.0))}
    drift_plot(tmp_path / "drift.png", reports, xlabel="model year")
    assert Image.open(tmp_path / "drift.png").size[0] > 100
    with pytest.raises(ValueError, match="no drift reports"):
        drift_plot(tmp_path / "none.png", {})
