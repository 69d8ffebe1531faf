"""Loading: checkpoints in OpenAI's archive format and as state dicts, bad files, bad names, text embeddings."""
import os

import pytest
import torch
from safetensors.torch import save_file

from segclip.errors import ConfigError, ModelError, OutputError
from segclip.models import load_model, read_checkpoint
from segclip.models.text import TEMPLATE_SETS, centre, encode_classes


@pytest.fixture(scope="module")
def rn50():
    return load_model("RN50", "none", seed=3)


def outputs(model):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(1, 3, 224, 224, generator=generator)
    with torch.no_grad():
        return model.clip.encode_image(images), model.encode_text(["a photo of a cat."])


class OpenAIStyle(torch.nn.Module):
    """The CLIP's modules and parameters at top level plus OpenAI's metadata scalars, as in OpenAI's archives."""

    def __init__(self, clip):
        super().__init__()
        for name, child in clip.named_children():
            self.add_module(name, child)
        for name, parameter in clip.named_parameters(recurse=False):
            self.register_parameter(name, parameter)
        for name, buffer in clip.named_buffers(recurse=False):
            if name not in clip._non_persistent_buffers_set:  # OpenAI's archives hold no attention mask
                self.register_buffer(name, buffer)
        for key, value in (("input_resolution", 224), ("context_length", 77), ("vocab_size", 49408)):
            self.register_buffer(key, torch.tensor(value))

    def forward(self, image):
        return self.visual(image)


def write_openai_archive(model, path):
    """A TorchScript archive shaped like OpenAI's release (a traced module; state dict with metadata scalars)."""
    with torch.no_grad():
        traced = torch.jit.trace(OpenAIStyle(model.clip), (torch.zeros(1, 3, 224, 224),), check_trace=False)
    traced.save(str(path))
    assert set(traced.state_dict()) == set(model.clip.state_dict()) | {"input_resolution", "context_length",
                                                                       "vocab_size"}


def test_openai_archive_and_state_dicts_reload_identically(rn50, tmp_path):
    expected_image, expected_text = outputs(rn50)
    archive = tmp_path / "RN50.pt"
    write_openai_archive(rn50, archive)
    state, is_archive = read_checkpoint(archive)
    assert is_archive and "input_resolution" not in state
    from_archive = load_model("RN50", archive)
    assert from_archive.info.quick_gelu  # OpenAI's archives imply QuickGELU (text tower only)
    assert torch.equal(outputs(from_archive)[0], expected_image)

    torch.save({"state_dict": {f"module.{k}": v for k, v in rn50.clip.state_dict().items()}}, tmp_path / "sd.pt")
    save_file({k: v.contiguous() for k, v in rn50.clip.state_dict().items()}, str(tmp_path / "sd.safetensors"))
    for name in ("sd.pt", "sd.safetensors"):
        reloaded = load_model("RN50", tmp_path / name)
        image, text = outputs(reloaded)
        assert torch.equal(image, expected_image) and torch.equal(text, expected_text)
        assert reloaded.info.weights_hash != rn50.info.weights_hash and len(reloaded.info.weights_hash) == 64


@pytest.mark.parametrize("fraction", [0.0, 0.5])
def test_truncated_checkpoint_is_a_clear_error(rn50, tmp_path, fraction):
    full = tmp_path / "full.pt"
    torch.save(rn50.clip.state_dict(), full)
    data = full.read_bytes()
    broken = tmp_path / "broken.pt"
    broken.write_bytes(data[: int(len(data) * fraction)])
    with pytest.raises(ModelError, match="truncated, corrupt or not a weights file"):
        load_model("RN50", broken)


def test_checkpoint_of_another_architecture(rn50, tmp_path):
    torch.save(rn50.clip.state_dict(), tmp_path / "rn50.pt")
    with pytest.raises(ModelError, match="do not fit RN101"):
        load_model("RN101", tmp_path / "rn50.pt")


class Payload:
    """An arbitrary object: a safe loader must refuse to unpickle it."""


def test_pickled_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": Payload()}, path)
    with pytest.raises(ModelError):
        load_model("RN50", path)


@pytest.mark.parametrize("name, pretrained, message", [
    ("RN51", "none", "Unknown model 'RN51'"),
    ("ViT-B-32", "none", "not a CLIP-ResNet"),
    ("RN50", "no-such-tag", "Unknown pretrained tag 'no-such-tag'"),
    ("RN50", "/no/such/file.pt", "does not exist"),
])
def test_bad_names(name, pretrained, message):
    with pytest.raises(ModelError, match=message):
        load_model(name, pretrained)


def test_download_failure_says_how_to_pass_a_file(monkeypatch):
    import open_clip

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(open_clip, "download_pretrained", offline)
    with pytest.raises(ModelError, match="--pretrained /path/to/RN50.pt"):
        load_model("RN50", "openai")


def test_low_precision_on_cpu_is_refused():
    with pytest.raises(ModelError, match="GPU"):
        load_model("RN50", "none", precision="bf16")


def test_quickgelu_variant():
    assert load_model("RN50-quickgelu", "none").info.quick_gelu


def test_text_cache_is_keyed_and_rebuilt(rn50, tmp_path):
    cache = tmp_path / "text"
    first = encode_classes(rn50, ["cat", "dog"], "single", cache_root=cache)
    files = list(cache.glob("*.safetensors"))
    assert len(files) == 1
    assert torch.allclose(first.norm(dim=-1), torch.ones(2))
    assert torch.equal(encode_classes(rn50, ["cat", "dog"], "single", cache_root=cache), first)
    other = encode_classes(rn50, ["dog", "cat"], "single", cache_root=cache)  # another key
    assert torch.equal(other, first.flip(0)) and len(list(cache.glob("*.safetensors"))) == 2
    files[0].write_bytes(b"garbage")  # a corrupt entry is rebuilt, never used
    assert torch.equal(encode_classes(rn50, ["cat", "dog"], "single", cache_root=cache), first)


def test_text_cache_unwritable(rn50, tmp_path):
    if os.geteuid() == 0:
        blocker = tmp_path / "file"
        blocker.write_text("not a folder")
        folder = blocker / "text"
    else:
        folder = tmp_path / "ro"
        folder.mkdir(mode=0o500)
    with pytest.raises(OutputError, match="SEGCLIP_CACHE"):
        encode_classes(rn50, ["cat"], "single", cache_root=folder)


@pytest.mark.parametrize("names, message", [([], "empty"), (["cat", " "], "blank"), (["cat", "Cat"], "Duplicate")])
def test_bad_class_names(rn50, names, message):
    with pytest.raises(ConfigError, match=message):
        encode_classes(rn50, names, "single", cache=False)


def test_templates_and_centring():
    assert len(TEMPLATE_SETS["openai"]) == 80 and TEMPLATE_SETS["openai"][0] == "a bad photo of a {}."
    assert TEMPLATE_SETS["maskclip"][:80] == TEMPLATE_SETS["openai"] and len(TEMPLATE_SETS["maskclip"]) == 85
    assert TEMPLATE_SETS["maskclip"][80] == "there is a {} in the scene."
    embeddings = torch.nn.functional.normalize(torch.randn(5, 8), dim=-1)
    centred = centre(embeddings)
    assert torch.allclose(centred.norm(dim=-1), torch.ones(5))
    direction = torch.nn.functional.normalize(embeddings - embeddings.mean(0), dim=-1)
    assert torch.allclose(centred, direction, atol=1e-6)
    reference = torch.nn.functional.normalize(torch.randn(50, 8), dim=-1)
    assert torch.allclose(centre(embeddings, reference),
                          torch.nn.functional.normalize(embeddings - reference.mean(0), dim=-1), atol=1e-6)


def test_short_context_text_encoding_equals_open_clip(rn50):
    prompts = ["a photo of a cat.", "a bad photo of the very large and rather old grey elephant in the scene.",
               "dog", "a photo of many small red cars.", "grass."]
    with torch.no_grad():
        full = rn50.clip.encode_text(rn50.tokenizer(prompts))
    assert torch.allclose(rn50.encode_text(prompts), full, atol=1e-5, rtol=1e-5)
    # batches of prompts sorted by length, each cut at its own longest: rows come back in the caller's order
    assert torch.allclose(rn50.encode_text(prompts, batch_size=2), full, atol=1e-5, rtol=1e-5)


def test_class_embedding_recipe_against_brute_force(rn50):
    """Method.md section 3: each prompt encoded and L2-normalised, the per-class mean L2-normalised again."""
    from segclip.models.text import encode_classes

    templates = ("a photo of a {}.", "a drawing of the {}.", "{}")
    got = encode_classes(rn50, ["cat", "traffic light"], templates, cache=False)
    with torch.no_grad():
        expected = []
        for name in ["cat", "traffic light"]:
            prompts = rn50.clip.encode_text(rn50.tokenizer([t.format(name) for t in templates])).float()
            mean = torch.nn.functional.normalize(prompts, dim=-1).mean(0)
            expected.append(mean / mean.norm())
    assert torch.allclose(got, torch.stack(expected), atol=1e-5)
    assert torch.allclose(got.norm(dim=-1), torch.ones(2), atol=1e-6)  # the mean of unit vectors is shorter
