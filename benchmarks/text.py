"""Text encoding over only the tokens a prompt needs against open_clip's ``encode_text``, in one run.

CLIP's text transformer is causal, so a prompt's embedding (read at its end-of-text token) does not depend on the
context after it. segclip's :func:`~segclip.models.loading.encode_tokens` sorts prompts by the position of that
token, batches them and cuts each batch after its longest prompt; ``encode_text`` runs the full 77-token context.
Both encode the same prompts (PASCAL VOC's 20 classes x the 80 OpenAI templates by default, 1600 prompts, or the
first ``--prompts`` of them) in the same batches of ``--batch-size``; the rounds alternate the order and each
path's fastest round is its time. The table also gives the largest difference relative to the embeddings' scale.

Then (unless ``--no-class-files``) the time to make the class embeddings of the eight benchmark class files (every
distinct query name x the 80 OpenAI templates, 52,560 RN50 prompts: tokenising, the length check and the encoding,
``encode_classes`` without its cache), file by file.

    python benchmarks/text.py [--model RN50] [--device cpu] [--precision fp32] [--prompts 640] [--rounds 2]
    # last line: text_speedup: <x> (goal: >= 5)
"""
from __future__ import annotations

import argparse
import time

import torch

from segclip.data.queries import BENCHMARK_CLASS_FILES, benchmark_class_file, read_query_file
from segclip.models import load_model
from segclip.models.loading import encode_tokens
from segclip.models.text import OPENAI_TEMPLATES, encode_classes
from segclip.segment.pipeline import distinct_queries

VOC = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "dining table", "dog",
       "horse", "motorbike", "person", "potted plant", "sheep", "sofa", "train", "tv monitor")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def full_context(model, tokens: torch.Tensor, batch_size: int) -> torch.Tensor:
    """open_clip's ``encode_text`` over the whole context, in the same batch size."""
    return torch.cat([model.clip.encode_text(chunk.to(model.device)) for chunk in tokens.split(batch_size)])


def timed(function, device: torch.device, *args) -> tuple[float, torch.Tensor]:
    sync(device)
    start = time.perf_counter()
    with torch.inference_mode():
        out = function(*args)
    sync(device)
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="RN50", help="open_clip RN model (random weights; default: RN50).")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda.")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="the model's dtype (bf16: GPU).")
    parser.add_argument("--prompts", type=int, default=640, help="prompts compared (default: 640 of VOC x 80).")
    parser.add_argument("--batch-size", type=int, default=256, help="prompts per forward pass (default: 256).")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of both paths (default: 2).")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice).")
    parser.add_argument("--no-class-files", action="store_true", help="skip the eight class files' timing.")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    model = load_model(args.model, "none", device=device, precision=args.precision)
    prompts = [template.format(name) for name in VOC for template in OPENAI_TEMPLATES][:args.prompts]
    tokens = model.tokenizer(prompts)
    lengths = tokens.argmax(-1) + 1
    print(f"{args.model} ({args.precision}, {device}, {torch.get_num_threads()} threads): {len(prompts)} prompts of "
          f"{int(lengths.min())}-{int(lengths.max())} tokens (mean {lengths.float().mean():.1f}) in a "
          f"{tokens.shape[1]}-token context, batches of {args.batch_size}")
    times: dict[str, list[float]] = {"encode_text (full context)": [], "segclip (cut per batch)": []}
    outputs: dict[str, torch.Tensor] = {}
    paths = {"encode_text (full context)": lambda: full_context(model, tokens, args.batch_size),
             "segclip (cut per batch)": lambda: encode_tokens(model.clip, tokens, args.batch_size)}
    names = list(paths)
    for index in range(args.rounds):
        for name in names if index % 2 == 0 else names[::-1]:
            seconds, outputs[name] = timed(paths[name], device)
            times[name].append(seconds)
    reference, ours = (outputs[name].float() for name in names)
    difference = float((ours - reference).abs().max() / reference.abs().max())
    best = {name: min(values) for name, values in times.items()}
    print("| path | seconds (best of rounds) | prompts/s | rounds |")
    print("|---|---|---|---|")
    for name in names:
        print(f"| {name} | {best[name]:.3f} | {len(prompts) / best[name]:.0f} | "
              f"{', '.join(f'{t:.2f}' for t in times[name])} |")
    print(f"largest difference / largest |embedding|: {difference:.1e}")
    if not args.no_class_files:
        total_seconds, total_prompts = 0.0, 0
        print("| class file | names | prompts | seconds |")
        print("|---|---|---|---|")
        for file in BENCHMARK_CLASS_FILES:
            queries = read_query_file(benchmark_class_file(file), allow_duplicates=True)[0]
            distinct = distinct_queries(queries)[0]
            seconds, _ = timed(lambda: encode_classes(model, distinct, "openai", cache=False), device)
            count = len(distinct) * len(OPENAI_TEMPLATES)
            total_seconds, total_prompts = total_seconds + seconds, total_prompts + count
            print(f"| {file} | {len(distinct)} | {count} | {seconds:.1f} |", flush=True)
        print(f"eight_class_files_seconds: {total_seconds:.1f} ({total_prompts} prompts, "
              f"{total_prompts / total_seconds:.0f} prompts/s; {args.model} {args.precision} on {device})")
    print(f"text_speedup: {best[names[0]] / best[names[1]]:.2f} (goal: >= 5)")


if __name__ == "__main__":
    main()
