"""Train segclip's bundled tiny CLIP-ResNet on synthetic captioned scenes (CPU, deterministic from --seed).

The image tower is open_clip's ``ModifiedResNet``, so its attention pool is the same code path as RN50x16's:
width 16 gives N = 512 layer4 neurons, H = 8 heads of width 64, a 6 x 6 grid at the native 192 x 192 input and a
d = 64 embedding. The text tower is a small open_clip transformer over the standard BPE vocabulary (49,408 tokens).
Batches are rendered on the fly by :func:`segclip.data.synthetic.render_scene` (batch ``i`` from
``SeedSequence([seed, i])``, in a worker process); each caption names every class in its scene and is phrased
through a prompt template drawn from the 80 OpenAI ImageNet templates and MaskCLIP's 5 "... in the scene." ones,
so the text tower learns both the class words and the prompt wording segclip's text recipes use. At the end, the
model is evaluated zero-shot on :func:`segclip.data.synthetic.classification_set` (its own seed, so held out).

Writes ``OUT/config.json`` (the exact ``open_clip.model.CLIP`` keyword arguments, the class names and the training
record) and ``OUT/weights.safetensors`` (the full state dict in fp16), both atomically::

    python tools/train_tiny_clip.py --steps 400 --batch-size 64 --threads 1 --workers 1
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import safetensors.torch
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from segclip.data.synthetic import SYNTHETIC_CLASSES, classification_set, render_scene, render_single_class

log = logging.getLogger("train_tiny_clip")

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "segclip" / "assets" / "tiny-rn"
MODEL_CFG = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 192, "layers": [1, 1, 1, 1], "width": 16, "head_width": 64},
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 2},
    "quick_gelu": True,
}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MASKCLIP_TEMPLATES = tuple(
    f"{start} {{}} in the scene." for start in ("there is a", "there is the", "this is a", "this is the", "this is one")
)
TEMPLATES = tuple(t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES) + MASKCLIP_TEMPLATES
SIMPLE_TEMPLATE = "a photo of a {}."
EVAL_SEED = 20_240_601


class SceneBatches(Dataset):
    """Item ``i`` is training batch ``i``: images (B, 3, S, S) float32 CLIP-normalised, tokens (B, L) int64.

    Each batch holds min(C, B // 4) images that show one class alone (:func:`render_single_class`, distinct classes,
    captioned with the class name); the rest are scenes whose captions name every class they show.
    """

    def __init__(self, seed: int, steps: int, batch_size: int, size: int, context_length: int):
        self.seed, self.steps, self.batch_size, self.size, self.context_length = (
            seed, steps, batch_size, size, context_length
        )

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(np.random.SeedSequence([self.seed, step]))
        n_single = min(len(SYNTHETIC_CLASSES), self.batch_size // 4)
        scenes = [render_scene(rng, self.size, self.size) for _ in range(self.batch_size - n_single)]
        labels = rng.choice(len(SYNTHETIC_CLASSES), size=n_single, replace=False)
        images = [s.image for s in scenes] + [render_single_class(rng, int(c), self.size) for c in labels]
        phrases = [s.phrase for s in scenes] + [SYNTHETIC_CLASSES[c] for c in labels]
        captions = [TEMPLATES[rng.integers(len(TEMPLATES))].format(p) for p in phrases]
        return normalise(np.stack(images)), open_clip.tokenize(captions, context_length=self.context_length)


def _single_thread(worker: int) -> None:
    """Rendering workers use one torch thread each; the training process keeps --threads."""
    torch.set_num_threads(1)


def normalise(images: np.ndarray) -> torch.Tensor:
    """(B, H, W, 3) uint8 RGB -> (B, 3, H, W) float32 with CLIP's mean and std."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)


@torch.no_grad()
def class_embeddings(model: open_clip.model.CLIP, templates: tuple[str, ...], context_length: int) -> torch.Tensor:
    """(C, d) L2-normalised per-class means of L2-normalised prompt embeddings (no centring)."""
    embeddings = []
    for name in SYNTHETIC_CLASSES:
        tokens = open_clip.tokenize([t.format(name) for t in templates], context_length=context_length)
        embeddings.append(F.normalize(model.encode_text(tokens, normalize=True).mean(0), dim=-1))
    return torch.stack(embeddings)


@torch.no_grad()
def zero_shot_accuracy(model: open_clip.model.CLIP, n_images: int, size: int, context_length: int) -> dict:
    """Zero-shot accuracy on the held-out classification set, with the simple and with the 80 OpenAI templates."""
    model.eval()
    images, labels = classification_set(n_images, EVAL_SEED, size)
    features = torch.cat([model.encode_image(normalise(images[i:i + 64]), normalize=True)
                          for i in range(0, n_images, 64)])
    result = {"images": n_images, "seed": EVAL_SEED}
    recipes = {"simple": (SIMPLE_TEMPLATE,), "openai80": TEMPLATES[:80]}
    for name, templates in recipes.items():
        predictions = (features @ class_embeddings(model, templates, context_length).T).argmax(1).numpy()
        result[name] = float((predictions == labels).mean())
    return result


def save(model: open_clip.model.CLIP, out: Path, record: dict) -> None:
    """Write ``weights.safetensors`` (fp16 floats, other dtypes kept) then ``config.json``, each atomically."""
    out.mkdir(parents=True, exist_ok=True)
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in model.state_dict().items()}
    config = {"name": "segclip-tiny", "model_cfg": MODEL_CFG, "classes": list(SYNTHETIC_CLASSES), "training": record}
    for name, write in (
        ("weights.safetensors", lambda path: safetensors.torch.save_file(state, path)),
        ("config.json", lambda path: Path(path).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")),
    ):
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", dir=out)
        os.close(fd)
        try:
            write(tmp)
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; package data must be readable by all
            os.replace(tmp, out / name)
        finally:
            Path(tmp).unlink(missing_ok=True)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on tensors of two or more dims (weights, kernels, embeddings); none on biases, norms, scale."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]


def train(args: argparse.Namespace) -> tuple[open_clip.model.CLIP, dict]:
    """Train, evaluate and save; return the model (fp16-rounded float32, as saved) and the record in config.json."""
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    start = time.monotonic()
    model = open_clip.model.CLIP(**MODEL_CFG)
    model.visual.to(memory_format=torch.channels_last)  # about 1.6x faster convolutions on CPU
    size, context = MODEL_CFG["vision_cfg"]["image_size"], MODEL_CFG["text_cfg"]["context_length"]
    optimizer = torch.optim.AdamW(parameter_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, args.steps // 20)

    def warmup_cosine(step: int) -> float:
        """Linear warm-up over the first 5 % of steps, then cosine decay to zero."""
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, args.steps - warmup)))

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine)
    batches = DataLoader(
        SceneBatches(args.seed, args.steps, args.batch_size, size, context), batch_size=None, shuffle=False,
        num_workers=args.workers, prefetch_factor=4 if args.workers else None, worker_init_fn=_single_thread,
    )
    model.train()
    for step, (images, tokens) in enumerate(batches):
        image_features, text_features, logit_scale = model(images.contiguous(memory_format=torch.channels_last), tokens)
        logits = logit_scale * image_features @ text_features.T
        targets = torch.arange(len(logits))
        loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % args.log_every == 0 or step == args.steps - 1:
            log.info("step %d/%d loss %.4f scale %.1f lr %.2e %.0fs", step, args.steps, loss.item(),
                     logit_scale.item(), schedule.get_last_lr()[0], time.monotonic() - start)
    train_seconds = time.monotonic() - start
    model.visual.to(memory_format=torch.contiguous_format)  # as any loader builds it: bitwise equal outputs
    with torch.no_grad():  # evaluate what ships: fp16-rounded weights
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half())
    accuracy = zero_shot_accuracy(model, args.eval_images, size, context)
    log.info("zero-shot accuracy: %s", accuracy)
    record = {
        "seed": args.seed, "steps": args.steps, "batch_size": args.batch_size, "lr": args.lr,
        "weight_decay": args.weight_decay, "threads": args.threads, "workers": args.workers,
        "train_seconds": round(train_seconds, 1), "wall_seconds": round(time.monotonic() - start, 1),
        "zero_shot_accuracy": accuracy, "torch": torch.__version__, "open_clip": open_clip.__version__,
        "templates": "captions: 80 OpenAI ImageNet templates + 5 MaskCLIP '... in the scene.' over scene phrases",
    }
    save(model, args.out, record)
    return model, record


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; see ``--help``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: the bundled asset)")
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the training process")
    parser.add_argument("--workers", type=int, default=1, help="scene-rendering worker processes (0: render inline)")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--eval-images", type=int, default=600, help="held-out zero-shot classification images")
    parser.add_argument("--log-every", type=int, default=25)
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 2:
        parser.error("--steps must be >= 1 and --batch-size >= 2 (the contrastive loss needs negatives)")
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    train(parse_args())
