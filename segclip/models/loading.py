"""Loading CLIP-ResNet models from open_clip: by pretrained tag, local checkpoint file, or random initialisation.

Every path ends in one place: an open_clip ``CLIP`` built from its config with keyword arguments, then a state
dict loaded strictly. Checkpoints are read without unpickling arbitrary Python objects: safetensors,
``torch.load(weights_only=True)``, or (for OpenAI's TorchScript ``.pt`` archives) ``torch.jit.load``, whose
loader only rebuilds TorchScript modules and tensors.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import torch
from open_clip.modified_resnet import ModifiedResNet
from open_clip.transformer import text_global_pool
from safetensors.torch import load_file as load_safetensors
from tqdm import tqdm

from segclip.config import Config, option, progress_enabled
from segclip.core.attnpool import AttentionPool
from segclip.core.info import ModelInfo
from segclip.core.pairs import PairDirections
from segclip.core.trace import (
    HOOK_POINTS,
    HookSpec,
    Trace,
    backbone_neurons,
    check_images,
    merge_hooks,
    trace_pool,
)
from segclip.errors import ConfigError, ModelError
from segclip.paths import bundled_dir, cache_dir

log = logging.getLogger(__name__)

RESNET_NAMES = ("RN50", "RN101", "RN50x4", "RN50x16", "RN50x64")
BUNDLED_NAME = "segclip-tiny"
OPENAI_METADATA_KEYS = ("input_resolution", "context_length", "vocab_size")  # scalars in OpenAI's archives
PRECISIONS = {"fp32": torch.float32, "fp64": torch.float64, "bf16": torch.bfloat16, "fp16": torch.float16}


class CLIPResNet(torch.nn.Module):
    """A loaded CLIP-ResNet: the open_clip model, its tokenizer, what it is, and its decomposition.

    Named hook points (:data:`~segclip.core.trace.HOOK_POINTS`): ``stem``, ``layer1``..``layer3``, ``neurons``
    (layer4 output), ``activations`` (z, before the positional embedding), ``tokens`` (z'), ``extra_keys`` and
    ``attention`` (class-token attention). A hook is a callable taking the tensor and returning a replacement or
    None; pass them per call (``trace(images, hooks={"neurons": fn})``) or for a block (``with
    model.hooks({...}):``). An unknown name is an error listing the valid ones. Nothing of open_clip is patched.

    The parameters are frozen (``requires_grad=False``): segclip never trains. Grad mode is the caller's: under
    ``torch.inference_mode()`` nothing is recorded, otherwise gradients flow from the trace to the images.

    Args:
        clip: an open_clip ``CLIP`` whose ``visual`` is a ``ModifiedResNet``.
        tokenizer: the matching open_clip tokenizer.
        info: the model's :class:`ModelInfo`.
        interpolate_positions: accept inputs of other sizes (multiples of 32) by interpolating the positional
            embedding. Off by default.

    Example:
        >>> import torch
        >>> from segclip.models import load_model
        >>> model = load_model("RN50", "none")
        >>> trace = model.trace(torch.randn(2, 3, 224, 224))
        >>> trace.pair_scalars.shape, trace.output.shape
        (torch.Size([2, 2048, 32]), torch.Size([2, 1024]))
    """

    hook_points = HOOK_POINTS

    def __init__(self, clip: torch.nn.Module, tokenizer: Any, info: ModelInfo, interpolate_positions: bool = False):
        super().__init__()
        if not isinstance(clip.visual, ModifiedResNet):
            raise ModelError(f"{info.name} is not a CLIP-ResNet (its image tower is {type(clip.visual).__name__}).")
        self.clip = clip.requires_grad_(False)
        self.tokenizer = tokenizer
        self.info = info
        self.pool = AttentionPool(clip.visual.attnpool, interpolate_positions=interpolate_positions)
        self._pairs = PairDirections(self.pool)
        self._hook_stack: list[dict] = []

    @property
    def pairs(self) -> PairDirections:
        """The pair directions w[n, h] and biases, in closed form (one object per model; its norms are cached)."""
        return self._pairs

    @contextlib.contextmanager
    def hooks(self, hooks: HookSpec) -> Iterator[CLIPResNet]:
        """Register hooks for every trace inside the block (nested blocks add to the outer ones).

        Raises:
            ConfigError: an unknown hook point.

        Example:
            >>> import torch
            >>> from segclip.models import load_model
            >>> model, seen = load_model(), []
            >>> with model.hooks({"attention": seen.append}):
            ...     _ = model.trace(torch.zeros(1, 3, 192, 192))
            >>> seen[0].shape
            torch.Size([1, 8, 37])
        """
        self._hook_stack.append(merge_hooks(hooks))
        try:
            yield self
        finally:
            self._hook_stack.pop()

    def _active_hooks(self, hooks: HookSpec | None) -> dict:
        return merge_hooks(*self._hook_stack, hooks)

    def neurons(self, images: torch.Tensor, hooks: HookSpec | None = None) -> torch.Tensor:
        """Layer4 activations: (B, 3, S, S) normalised images -> (B, N, S/32, S/32)."""
        check_images(images, self.info.image_size, self.pool.interpolate_positions)
        return backbone_neurons(self.visual, images.to(self.device), self._active_hooks(hooks))

    def trace(self, images: torch.Tensor, *, token_heads: bool = False, hooks: HookSpec | None = None,
              autocast: torch.dtype | None = None, check_finite: bool = True) -> Trace:
        """One batched forward pass with its exact decomposition.

        Args:
            images: (B, 3, S, S) CLIP-normalised images.
            token_heads: also compute the token-head contributions (B, K+1, H, d).
            hooks: callables at the named hook points, added after those of enclosing :meth:`hooks` blocks;
                interventions such as :class:`~segclip.core.trace.RegisterIntervention` give theirs with
                ``.hooks()``.
            autocast: run the convolutional backbone under autocast in this dtype (``torch.bfloat16`` or
                ``torch.float16``); layer4's output is cast back to the model's dtype, so the attention pool, its
                decomposition and everything after it stay in full precision. None: no autocast.
            check_finite: refuse NaN or inf pixels (a host synchronisation; callers whose crops come from uint8
                images skip it).

        Returns:
            The :class:`~segclip.core.trace.Trace`.

        Raises:
            ModelError: wrong shape, channel count or size, or non-finite pixels.
            ConfigError: an unknown hook point.
        """
        active = self._active_hooks(hooks)
        check_images(images, self.info.image_size, self.pool.interpolate_positions, finite=check_finite)
        images = images.to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
            neurons = backbone_neurons(self.visual, images, active)
        return trace_pool(self.pool, neurons.to(self.dtype), token_heads=token_heads, hooks=active)

    @property
    def visual(self) -> ModifiedResNet:
        return self.clip.visual

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.visual.attnpool.c_proj.weight.dtype

    @torch.no_grad()
    def encode_text(self, prompts: list[str], batch_size: int = 256) -> torch.Tensor:
        """Text embeddings, not normalised: :func:`encode_tokens` on the tokenised prompts (grouped by length, each
        batch's context cut after its longest prompt; ``encode_text``'s result up to round-off). A progress bar
        shows when there are more than 8 batches.

        Args:
            prompts: C strings.
            batch_size: prompts per forward pass.

        Returns:
            (C, d) tensor in the model's dtype.
        """
        return encode_tokens(self.clip, self.tokenizer(prompts), batch_size)


def pooled_positions(clip: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor | None:
    """Per prompt, the position of the token open_clip's ``text_global_pool`` reads its embedding at.

    ``argmax`` pooling (every CLIP-ResNet) reads the highest token id, the end-of-text token (49407 in open_clip's
    tokenizer); ``eos`` pooling the first ``text_eos_id``. The id of padding (0) is also the BPE token ``!``, so a
    count of non-zero ids is not a length. None for a tower this does not fit (other pooling, no causal mask).

    Args:
        clip: an open_clip ``CLIP``.
        tokens: ``(n, context)`` token ids as its tokenizer writes them.

    Returns:
        ``(n,)`` int64 positions, or None.

    Example:
        >>> from segclip.models import load_model
        >>> model = load_model()
        >>> tokens = model.tokenizer(["a cat.", "!$%"])  # '!$%' -> ids 0, 3, 260: a 0 inside the prompt
        >>> pooled_positions(model.clip, tokens).tolist(), ((tokens != 0).sum(1) - 1).tolist()
        ([4, 4], [4, 3])
    """
    pool_type = getattr(clip, "text_pool_type", "argmax")
    if getattr(clip, "attn_mask", None) is None or not hasattr(clip, "token_embedding"):
        return None
    if pool_type == "argmax":
        return tokens.argmax(dim=-1)
    eos = getattr(clip, "text_eos_id", None)
    if pool_type == "eos" and eos is not None:
        found = tokens == eos
        # a row without the id reads position 0 in open_clip (argmax of all-False); it then needs the whole context
        last = torch.full_like(tokens[:, 0], tokens.shape[1] - 1)
        return torch.where(found.any(-1), found.int().argmax(dim=-1), last)
    return None


@torch.no_grad()
def encode_tokens(clip: torch.nn.Module, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """open_clip's ``CLIP.encode_text`` over only the tokens each prompt needs.

    The text transformer is causal: the pooled token's output depends on the tokens up to it and on nothing after.
    Prompts are sorted by the position of that token (:func:`pooled_positions`) and batched; each batch runs
    through open_clip's own modules on its first L positions, L = its longest prompt: ``token_embedding``,
    ``positional_embedding[:L]``, ``transformer`` with ``attn_mask[:L, :L]``, ``ln_final``, ``text_global_pool``,
    ``text_projection`` (open_clip untouched). A tower this does not fit goes through ``encode_text`` itself.

    Args:
        clip: an open_clip ``CLIP`` (its text tower).
        tokens: ``(n, context)`` token ids from its tokenizer.
        batch_size: prompts per forward pass.

    Returns:
        ``(n, d)`` embeddings, not normalised, in the tower's cast dtype, rows in the order of ``tokens``;
        ``clip.encode_text(tokens)`` up to float round-off.

    Example:
        >>> from segclip.models import load_model
        >>> model = load_model()
        >>> tokens = model.tokenizer(["a photo of a cat.", "dog"])
        >>> torch.allclose(encode_tokens(model.clip, tokens), model.clip.encode_text(tokens), atol=1e-5)
        True
    """
    device = next(clip.parameters()).device
    positions = pooled_positions(clip, tokens)
    if positions is None:
        return torch.cat([clip.encode_text(chunk.to(device)) for chunk in tokens.split(batch_size)])
    order = positions.argsort(stable=True)
    lengths = positions + 1
    out: torch.Tensor | None = None
    starts = range(0, len(tokens), batch_size)
    for start in tqdm(starts, desc="text", unit="batch", disable=len(starts) <= 8 or not progress_enabled(),
                      leave=False):
        rows = order[start:start + batch_size]
        length = int(lengths[rows].max())
        encoded = _encode_cut(clip, tokens[rows, :length].to(device), length)
        if out is None:
            out = encoded.new_empty(len(tokens), encoded.shape[-1])
        out[rows.to(device)] = encoded
    if out is None:  # no prompts
        return clip.encode_text(tokens.to(device))
    return out


def _encode_cut(clip: torch.nn.Module, tokens: torch.Tensor, length: int) -> torch.Tensor:
    """``encode_text`` on ``(b, length)`` tokens: the first ``length`` positions of the context."""
    cast = clip.transformer.get_cast_dtype()
    x = clip.token_embedding(tokens).to(cast) + clip.positional_embedding[:length].to(cast)  # (b, L, width)
    x = clip.ln_final(clip.transformer(x, attn_mask=clip.attn_mask[:length, :length]))
    pool_type = getattr(clip, "text_pool_type", "argmax")
    x = text_global_pool(x, tokens, pool_type, eos_token_id=getattr(clip, "text_eos_id", None))
    projection = clip.text_projection
    if projection is None:
        return x
    return projection(x) if isinstance(projection, torch.nn.Linear) else x @ projection


ModelSource = CLIPResNet | Callable[[], CLIPResNet]  # a model, or a loader


def resolve_model(model: CLIPResNet | Callable[[], CLIPResNet]) -> CLIPResNet:
    """A model, or a zero-argument loader called now: library runs take either, so that they can validate their
    inputs before paying for a model load (the command line passes a loader)."""
    return model if isinstance(model, CLIPResNet) else model()


def available_models() -> list[str]:
    """Names :func:`load_model` accepts."""
    return [BUNDLED_NAME] + [n for base in RESNET_NAMES for n in (base, f"{base}-quickgelu")]


def _model_config(name: str) -> tuple[dict[str, Any], Path | None, tuple[str, ...]]:
    """(open_clip CLIP kwargs, bundled weights path or None, bundled class names) for a model name."""
    if name == BUNDLED_NAME:
        folder = bundled_dir()
        config_path, weights = folder / "config.json", folder / "weights.safetensors"
        for path in (config_path, weights):
            if not path.is_file():
                raise ModelError(
                    f"The bundled model file {path} is missing. Reinstall segclip (pip install --force-reinstall .) "
                    "or regenerate it with `python tools/train_tiny_clip.py`.")
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
            return dict(config["model_cfg"]), weights, tuple(config.get("classes", ()))
        except (ValueError, KeyError) as err:
            raise ModelError(f"The bundled model config {config_path} is corrupt ({err}); reinstall segclip.") from err
    config = open_clip.get_model_config(name)
    if config is None:
        raise ModelError(f"Unknown model '{name}'. segclip supports: {', '.join(available_models())}.")
    layers = config.get("vision_cfg", {}).get("layers")
    if not isinstance(layers, (list, tuple)) or config["vision_cfg"].get("timm_model_name"):
        raise ModelError(
            f"'{name}' is not a CLIP-ResNet (its image tower is not open_clip's ModifiedResNet). segclip decomposes "
            f"the attention pool of CLIP-ResNets: use one of {', '.join(available_models())}.")
    config = copy.deepcopy(config)
    if name.endswith("-quickgelu"):
        config["quick_gelu"] = True
    return config, None, ()


def _is_torchscript_archive(path: Path) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n.endswith("constants.pkl") or "/code/" in n for n in archive.namelist())


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], bool]:
    """Read a state dict from a checkpoint file without unpickling arbitrary objects.

    Args:
        path: a ``.safetensors`` file, a state dict saved with ``torch.save`` (optionally under a
            ``state_dict`` key, with ``module.`` prefixes), or OpenAI's TorchScript ``.pt`` archive.

    Returns:
        (state dict of float tensors on CPU, whether it was an OpenAI TorchScript archive).

    Raises:
        ModelError: the file is missing, unreadable, truncated or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"Checkpoint file {path} does not exist.")
    is_archive = False
    try:
        if path.suffix == ".safetensors":
            state = load_safetensors(str(path))
        elif _is_torchscript_archive(path):
            is_archive = True
            state = torch.jit.load(str(path), map_location="cpu").state_dict()
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as err:  # torch/safetensors raise many types for a damaged file
        raise ModelError(
            f"Cannot read checkpoint {path}: it is truncated, corrupt or not a weights file ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Download it again, or pass another file with "
            "--pretrained PATH.") from err
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"Checkpoint {path} does not hold a state dict of tensors.")
    state = {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}
    for key in OPENAI_METADATA_KEYS:
        state.pop(key, None)
    return state, is_archive


def file_hash(path: str | os.PathLike) -> str:
    """sha256 of a file, memoised on disk by (path, size, mtime)."""
    path = Path(path).resolve()
    stat = path.stat()
    key = f"{path}|{stat.st_size}|{stat.st_mtime_ns}"
    memo_path = cache_dir() / "file_hashes.json"
    try:
        memo = json.loads(memo_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        memo = {}
    if key in memo:
        return memo[key]
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    memo[key] = digest.hexdigest()
    try:
        memo_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = memo_path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(memo), encoding="utf-8")
        tmp.replace(memo_path)
    except OSError:
        log.debug("could not memoise the hash of %s", path)
    return memo[key]


def _resolve_weights(name: str, pretrained: str, cache: str | None) -> Path:
    """Path of the weights file for a tag or a file path."""
    if os.path.sep in pretrained or pretrained.endswith((".pt", ".pth", ".bin", ".safetensors")) \
            or Path(pretrained).exists():
        path = Path(pretrained).expanduser()
        if not path.is_file():
            raise ModelError(f"Checkpoint file {path} does not exist. Pass an existing file with --pretrained PATH.")
        return path
    base = name.removesuffix("-quickgelu")
    tags = open_clip.list_pretrained_tags_by_model(base)
    cfg = open_clip.get_pretrained_cfg(base, pretrained)
    if not cfg:
        raise ModelError(
            f"Unknown pretrained tag '{pretrained}' for {name}. Known tags: {', '.join(tags) or 'none'}; "
            "or pass a local checkpoint file with --pretrained PATH, or 'none' for random weights.")
    cached = _cached_weights(cfg, cache)
    if cached is not None:
        return cached
    if not _online(cfg):
        raise ModelError(
            f"The '{pretrained}' weights of {name} are not in the download cache and this machine cannot reach "
            f"their server (checked in a few seconds, not retried). Download the checkpoint elsewhere (for OpenAI "
            f"weights, the .pt file from OpenAI's CLIP repository; or open_clip's file) and pass it: --pretrained "
            f"/path/to/{base}.pt")
    try:
        return Path(open_clip.download_pretrained(cfg, cache_dir=cache))
    except Exception as err:
        raise ModelError(
            f"Could not fetch the '{pretrained}' weights of {name} ({type(err).__name__}). This machine may be "
            f"offline. Download the checkpoint elsewhere (for OpenAI weights, the .pt file from OpenAI's CLIP "
            f"repository; or open_clip's file) and pass it: --pretrained /path/to/{base}.pt") from err


def _cached_weights(cfg: dict[str, Any], cache: str | None) -> Path | None:
    """The weights file of an open_clip pretrained config if it is already in the Hugging Face cache."""
    hub = cfg.get("hf_hub", "")
    if not hub:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo, filename = os.path.split(hub)
    names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for candidate in names:
        found = try_to_load_from_cache(repo, candidate, cache_dir=cache)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def _online(cfg: dict[str, Any], timeout: float = 3.0) -> bool:
    """Whether the weights' server answers a TCP connection within ``timeout`` seconds (no retries)."""
    import socket
    from urllib.parse import urlparse

    host = "huggingface.co" if cfg.get("hf_hub") else urlparse(cfg.get("url", "")).hostname
    if not host:
        return True
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _quick_gelu(name: str, pretrained: str, is_archive: bool, config: dict[str, Any]) -> bool:
    """Whether the weights were trained with QuickGELU, warning where the model name says otherwise.

    open_clip's pretrained tags and OpenAI's archives say it (every CLIP-ResNet tag was trained with QuickGELU);
    a bare state dict cannot, so the model name decides (``-quickgelu``) and a warning says so.
    """
    named = name.endswith("-quickgelu")
    base = name.removesuffix("-quickgelu")
    known = None
    tag = open_clip.get_pretrained_cfg(base, pretrained) if pretrained not in ("none", "bundled") else {}
    if is_archive:
        known = True
    elif tag:
        known = bool(tag.get("quick_gelu", False))
    if known is None:
        if pretrained not in ("none", "bundled"):
            log.warning("the checkpoint %s does not say whether it was trained with QuickGELU; building %s %s it. "
                        "If it holds OpenAI's or an open_clip CLIP-ResNet tag's weights, use --model %s-quickgelu.",
                        pretrained, name, "with" if named else "without", base)
        return bool(config.get("quick_gelu", False))
    if known and not named:
        log.warning("the %s weights of %s were trained with QuickGELU: segclip uses it (the model is %s-quickgelu)",
                    pretrained, name, base)
    elif named and not known:
        log.warning("--model %s asks for QuickGELU, but the %s weights were trained without it; building %s with "
                    "GELU (use --model %s)", name, pretrained, base, base)
    return known


def load_model(
    name: str = BUNDLED_NAME,
    pretrained: str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    seed: int = 0,
    download_dir: str | None = None,
) -> CLIPResNet:
    """Load a CLIP-ResNet.

    Args:
        name: ``segclip-tiny`` (bundled), or an open_clip ResNet name: RN50, RN101, RN50x4, RN50x16, RN50x64,
            optionally with ``-quickgelu``.
        pretrained: a tag open_clip knows (``openai``, ``yfcc15m``, ...), a local checkpoint path, or ``none`` for
            random initialisation (seeded by ``seed``). Default: ``bundled`` for ``segclip-tiny``, ``openai`` else.
        device: where the model lives.
        precision: ``fp32`` (default), ``fp64`` (tests), ``bf16`` or ``fp16`` (GPU only).
        seed: seed of the random initialisation when ``pretrained='none'``.
        download_dir: where open_clip caches downloaded weights.

    Returns:
        The :class:`CLIPResNet`, in eval mode.

    Raises:
        ModelError: unknown or non-ResNet model, unknown tag, unreadable checkpoint, weights that do not fit the
            architecture, or a low precision on CPU.

    Example:
        >>> from segclip.models import load_model
        >>> model = load_model("RN50", "none")
        >>> (model.info.neurons, model.info.heads, model.info.grid)
        (2048, 32, 7)
    """
    if precision not in PRECISIONS:
        raise ModelError(f"Unknown precision '{precision}'; use one of {', '.join(PRECISIONS)}.")
    device = torch.device(device)
    if precision in ("bf16", "fp16") and device.type == "cpu":
        raise ModelError(f"--precision {precision} is for GPUs; on the CPU use fp32.")
    config, bundled_weights, classes = _model_config(name)
    pretrained = str(pretrained) if pretrained is not None else ("bundled" if bundled_weights else "openai")
    if bundled_weights is not None and pretrained not in ("bundled", "none"):
        bundled_weights = None  # a user's own checkpoint for the tiny architecture
    if pretrained == "none":
        weights_path, weights_hash = None, f"random-init:{name}:seed{seed}"
    elif bundled_weights is not None:
        weights_path = bundled_weights
        weights_hash = file_hash(weights_path)
    else:
        weights_path = _resolve_weights(name, pretrained, download_dir)
        weights_hash = file_hash(weights_path)

    state = None
    if weights_path is not None:
        state, is_archive = read_checkpoint(weights_path)
        if bundled_weights is None:
            config["quick_gelu"] = _quick_gelu(name, pretrained, is_archive, config)
    torch.manual_seed(seed)
    clip = open_clip.model.CLIP(**config)
    if state is not None:
        state = {k: v.float() for k, v in state.items()}
        try:
            clip.load_state_dict(state, strict=True)
        except RuntimeError as err:
            missing = sorted(set(clip.state_dict()) - set(state))[:5]
            unexpected = sorted(set(state) - set(clip.state_dict()))[:5]
            raise ModelError(
                f"The weights in {weights_path} do not fit {name} (missing keys: {missing or 'none'}; unexpected "
                f"keys: {unexpected or 'none'}; or tensor shapes differ). Check --model matches the checkpoint."
            ) from err
    clip = clip.to(device=device, dtype=PRECISIONS[precision]).eval()
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=clip.context_length)
    visual = clip.visual
    pool = visual.attnpool
    neurons = pool.c_proj.in_features
    info = ModelInfo(
        name=name, pretrained=pretrained, weights_hash=weights_hash, image_size=int(visual.image_size),
        grid=int(round((pool.positional_embedding.shape[0] - 1) ** 0.5)), neurons=neurons, heads=pool.num_heads,
        head_dim=neurons // pool.num_heads, embed_dim=pool.c_proj.out_features,
        quick_gelu=bool(config.get("quick_gelu", False)), classes=classes)
    log.info("loaded %s (%s) on %s", name, pretrained, device)
    return CLIPResNet(clip, tokenizer, info)


@dataclass(frozen=True)
class ModelConfig(Config):
    """Which model to load and where it runs (the options every model command shares)."""

    model: str = option(BUNDLED_NAME, help="CLIP-ResNet: segclip-tiny (bundled, the default), RN50, RN101, RN50x4, "
                                           "RN50x16, RN50x64, or any of these with -quickgelu.")
    pretrained: str | None = option(None, help="weights: an open_clip tag (e.g. openai), a local checkpoint (.pt "
                                               "OpenAI archive, state dict .pt or .safetensors), or 'none' for random "
                                               "weights. Default: the bundled weights for segclip-tiny, 'openai' "
                                               "otherwise.")
    device: str = option("auto", help="cpu, cuda, cuda:1, ... (default: cuda if available).")
    precision: str = option("fp32", choices=("fp32", "bf16", "fp16"),
                            help="compute precision; bf16/fp16 need a GPU (default: fp32).")

    def resolve_device(self) -> torch.device:
        """``auto`` -> cuda when available, else cpu; a CUDA device that is absent is a clear error."""
        return resolve_device(self.device)

    def load(self) -> CLIPResNet:
        """:func:`load_model` with these options."""
        return load_model(self.model, self.pretrained, device=self.resolve_device(), precision=self.precision)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu.

    Raises:
        ConfigError: an unknown device name, or CUDA asked for where there is none.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise ConfigError(f"Unknown device '{name}'; use cpu, cuda or cuda:N.") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name} was asked for but no CUDA GPU is available; use --device cpu.")
    return device
