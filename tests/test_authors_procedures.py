"""segclip's analyses against independent numpy transcriptions of the authors' released procedures
(edmundbu/clip-neur-attn-decomposition: ``sparse_decomposition.py``, ``svd_over_dataset.py``)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.linear_model import orthogonal_mp
from test_analysis import small_model

from segclip.analysis.omp import centre_dictionary, omp, word_dictionary
from segclip.errors import ConfigError
from segclip.models import load_model
from segclip.models.text import encode_classes

WORDS = ["cat", "dog", "car", "tree", "sky", "road", "house", "water", "grass", "person", "boat", "bird", "horse",
         "chair", "table", "bottle", "train", "plane", "sheep", "cow", "flower", "mountain", "snow", "sand", "cloud",
         "window", "door", "wall", "floor", "light", "book", "phone", "clock", "cup", "bread", "apple", "orange",
         "banana", "pizza", "cake", "shirt", "shoe", "hat", "bag", "ball", "bike", "bus", "truck", "bridge",
         "river", "lake", "sea", "beach", "forest", "field", "city", "street", "garden", "kitchen", "bed", "sofa",
         "lamp", "mirror", "painting", "statue", "tower"]


def authors_dictionary(embeddings: np.ndarray) -> np.ndarray:
    """sparse_decomposition.py: ``text_descs - text_descs.mean(axis=0)``, then divided by
    ``np.linalg.norm(text_descs, axis=0, keepdims=True)`` (each embedding dimension over the vocabulary)."""
    centred = embeddings - embeddings.mean(axis=0)
    return centred / np.linalg.norm(centred, axis=0, keepdims=True)


@pytest.mark.parametrize("name", ["bundled", "RN50"])
@torch.no_grad()
def test_authors_dictionary_and_its_omp_words_match_numpy_and_scikit_learn(name):
    model = load_model() if name == "bundled" else load_model("RN50", "none")
    raw = encode_classes(model, WORDS, "single", cache=False).double().cpu()
    expected = authors_dictionary(raw.numpy())
    built = centre_dictionary(raw)
    assert np.abs(built.numpy() - expected).max() < 1e-12
    assert torch.allclose(word_dictionary(model, WORDS, "authors", "single").double().cpu(), built, atol=1e-6)
    assert torch.equal(word_dictionary(model, WORDS, "raw", "single").cpu(), raw.float())
    generator = torch.Generator().manual_seed(0)
    targets = torch.nn.functional.normalize(torch.randn(12, raw.shape[1], generator=generator, dtype=torch.float64),
                                            dim=-1)
    m = 8
    index, coefficients = omp(targets, built, m, record=[m])
    reference = orthogonal_mp(expected.T, targets.numpy().T, n_nonzero_coefs=m)  # (V, P): the words' coefficients
    for p in range(len(targets)):
        chosen = np.flatnonzero(reference[:, p])
        assert sorted(index[p].tolist()) == sorted(chosen.tolist())
        ours = dict(zip(index[p].tolist(), coefficients[m][p].tolist()))
        assert max(abs(ours[w] - reference[w, p]) for w in chosen) < 1e-8
    # the preprocessing matters: the raw dictionary picks other first words for some targets
    raw_index, _ = omp(targets, raw, 1)
    assert not torch.equal(raw_index[:, 0], index[:, 0])


def test_unknown_dictionary_is_refused():
    with pytest.raises(ConfigError, match="--dictionary"):
        word_dictionary(small_model(), WORDS, "centred", "single")
