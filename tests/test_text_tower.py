"""Text encoding over only the tokens a prompt needs equals open_clip's ``encode_text`` on every RN text tower."""
from types import SimpleNamespace

import open_clip
import pytest
import torch

from segclip.models.loading import encode_tokens, pooled_positions
from segclip.models.text import TEMPLATE_SETS, _cache_key

TINY_VISION = {"layers": [1, 1, 1, 1], "width": 8, "image_size": 32}  # the text tower is all that is used
SOT, EOT = 49406, 49407


def text_tower(name: str, layers: int | None = None, seed: int = 0) -> torch.nn.Module:
    """open_clip's CLIP for ``name`` with its real text tower (random init; ``layers`` blocks when given)."""
    config = open_clip.get_model_config(name)
    text_cfg = dict(config["text_cfg"], **({"layers": layers} if layers else {}))
    torch.manual_seed(seed)
    return open_clip.model.CLIP(embed_dim=config["embed_dim"], vision_cfg=TINY_VISION, text_cfg=text_cfg,
                                quick_gelu=config.get("quick_gelu", False)).eval()


def prompt_tokens(context: int = 77, seed: int = 0) -> torch.Tensor:
    """Tokens in the tokenizer's exact format: real prompts (an empty one, one whose '!' is id 0 = the padding id,
    one cut to fill the whole context) and fabricated rows of random lengths [SOT, ids, EOT, 0, ...]."""
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=context)
    prompts = ["", "a photo of a cat.", "!$% a strange !$% prompt", "dog",
               "a bad photo of the " + "very " * 90 + "large elephant."]
    real = tokenizer(prompts)
    assert (real[2, 1:-1] == 0).any() and real[2].argmax() > (real[2] != 0).sum() - 1  # a 0 inside the prompt
    assert real[4, -1] == EOT  # cut to the whole context
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for length in (2, 3, 9, 14, 30, context, context - 1, 12):
        row = torch.zeros(context, dtype=torch.long)
        row[0], row[length - 1] = SOT, EOT
        row[1:length - 1] = torch.randint(0, SOT, (length - 2,), generator=generator)  # 0 ('!') included
        rows.append(row)
    return torch.cat([real, torch.stack(rows)])


def relative_error(ours: torch.Tensor, reference: torch.Tensor) -> float:
    return float((ours - reference).abs().max() / reference.abs().max())


def check_tower(clip: torch.nn.Module, tokens: torch.Tensor, tolerance: float) -> None:
    with torch.no_grad():
        reference = clip.encode_text(tokens)
        for batch_size in (3, 256):  # batches of mixed lengths, cut at their own longest; rows in the given order
            ours = encode_tokens(clip, tokens, batch_size)
            assert ours.shape == reference.shape and ours.dtype == reference.dtype
            assert relative_error(ours, reference) < tolerance


@pytest.mark.parametrize("name", ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64", "RN50-quickgelu"])
def test_cut_context_equals_encode_text_on_every_rn_text_tower(name):
    """Each architecture's text tower (width, heads, context, vocabulary, activation) with one block; float32."""
    check_tower(text_tower(name, layers=1), prompt_tokens(), 1e-5)


def test_cut_context_in_float64_to_round_off():
    clip = text_tower("RN50", layers=2).double()
    check_tower(clip, prompt_tokens(seed=1), 1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["RN50", "RN101", "RN50x4", "RN50x16", "RN50x64"])
def test_cut_context_on_full_depth_text_towers(name):
    check_tower(text_tower(name), prompt_tokens(), 1e-5)


def test_pooled_positions_are_the_end_of_text_token():
    """The pooled position is where the end-of-text id sits (transcribed: the first index of 49407), not the count
    of non-zero ids (0 is also the BPE token '!')."""
    clip = text_tower("RN50", layers=1)
    tokens = prompt_tokens()
    expected = torch.tensor([row.tolist().index(EOT) for row in tokens])
    assert torch.equal(pooled_positions(clip, tokens), expected)
    assert (expected != (tokens != 0).sum(1) - 1).any()  # the fabricated rows make the two differ


def test_empty_token_batch():
    clip = text_tower("RN50", layers=1)
    assert encode_tokens(clip, torch.zeros(0, 77, dtype=torch.long)).shape == (0, 1024)


def test_text_cache_key_unchanged():
    """The cache key of a fixed model, names and templates is pinned: cached embeddings stay valid."""
    model = SimpleNamespace(info=SimpleNamespace(name="RN50", weights_hash="random-init:RN50:seed0",
                                                 quick_gelu=False))
    key, meta = _cache_key(model, ["cat", "traffic light"], TEMPLATE_SETS["single"])
    assert meta == ('{"model": "RN50", "names": ["cat", "traffic light"], "quick_gelu": false, "templates": '
                    '["a photo of a {}."], "version": 1, "weights": "random-init:RN50:seed0"}')
    assert key == PINNED_KEY


PINNED_KEY = "893b9a57f813c7a68db0631234065254"  # computed before the change (git ef8b36d)
