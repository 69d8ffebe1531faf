"""TextSpan from covariances against the authors' algorithm on explicit contributions (float64, a small model)."""
from __future__ import annotations

import pytest
import torch
from test_analysis import random_traces, small_model

from segclip.analysis.statistics import RunningStatistics, RunningTopDeviations, add_a2, head_contributions
from segclip.analysis.textspan import text_span, text_span_condition
from segclip.errors import ConfigError


@pytest.fixture(scope="module")
def setup():
    model = small_model()
    traces = list(random_traces(model, batches=3, batch=10, seed=7))
    running = RunningStatistics(model.pool, top_k=8, registers=False)
    for i, trace in enumerate(traces):
        running.update(trace, 10 * i)
    words = torch.nn.functional.normalize(torch.randn(300, 32, generator=torch.Generator().manual_seed(1),
                                                      dtype=torch.float64), dim=-1)
    stats = running.finalise()
    second = RunningTopDeviations(model.pool, stats.mean_scalars, top_k=8)  # the A.2 pass
    for i, trace in enumerate(traces):
        second.update(trace, 10 * i)
    return model, add_a2(stats, second), traces, words


def reference_text_span(data: torch.Tensor, texts: torch.Tensor, span: torch.Tensor, rounds: int):
    """The authors' ``replace_with_iterative_removal`` on explicit data (images, d), texts projected on ``span``."""
    projector = span @ torch.linalg.pinv(span)  # onto the column space of span (d, q)
    texts = texts @ projector.T
    data = data - data.mean(0)
    chosen, variances = [], []
    for _ in range(rounds):
        projection = data @ texts.T
        top = int(projection.var(0, unbiased=False).argmax())
        t = texts[top]
        norm2 = t @ t
        chosen.append(top)
        variances.append(((data @ t) ** 2).mean().item() / norm2.item())
        data = data - (data @ t / norm2)[:, None] * t
        texts = texts - (texts @ t / norm2)[:, None] * t
    return chosen, variances


@torch.no_grad()
@pytest.mark.parametrize("samples", ["all", "top"])
def test_text_span_from_covariance_equals_the_algorithm_on_explicit_contributions(setup, samples):
    model, stats, traces, words = setup
    spans = text_span(model.pool, stats, words, 6, samples)
    alpha = torch.cat([t.pair_scalars for t in traces])
    contributions = head_contributions(model.pool, alpha)  # (n, H, d)
    w_o = model.pool.pool.c_proj.weight.view(32, 4, 64)
    for head in range(4):
        data = contributions[:, head]
        if samples == "top":  # A.2's rows: each head's k images farthest from its mean over all images
            data = data - data.mean(0)
            data = data[data.norm(dim=-1).argsort(descending=True)[:stats.top_k]]
        chosen, variances = reference_text_span(data, words, w_o[:, head], 6)
        assert spans.index[head].tolist() == chosen
        assert torch.allclose(spans.variance[head], torch.tensor(variances, dtype=torch.float64), rtol=1e-9)
    directions = spans.directions
    assert torch.allclose(directions @ directions.transpose(1, 2), torch.eye(6, dtype=torch.float64).expand(4, 6, 6),
                          atol=1e-10)


@torch.no_grad()
def test_full_span_reconstructs_the_output_and_fewer_texts_do_not(setup):
    model, stats, traces, words = setup
    spans = text_span(model.pool, stats, words, 32)  # d = 32: the texts span each head's whole range
    for trace in traces:
        assert torch.allclose(text_span_condition(model.pool, stats, spans, 32)(trace), trace.output, atol=1e-10)
    partial = text_span_condition(model.pool, stats, spans, 3)(traces[0])
    assert not torch.allclose(partial, traces[0].output, atol=1e-3)
    assert torch.allclose(spans.variance.sum(1), spans.total_variance, rtol=1e-9)  # all variance explained


def test_text_span_rejects_bad_arguments(setup):
    model, stats, _, words = setup
    with pytest.raises(ConfigError, match="between 1 and 32"):
        text_span(model.pool, stats, words, 33)
    with pytest.raises(ConfigError, match="unknown TextSpan samples"):
        text_span(model.pool, stats, words, 2, "most")
