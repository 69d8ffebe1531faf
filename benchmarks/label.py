"""OMP speed for labelling every pair of RN50x16: 147,456 directions, d = 768, 30,000 words, m = 64.

Random unit directions and random unit "word embeddings" of the right shape (OMP's cost does not depend on the
values). Times, in one run and on the same inputs:

- segclip's batched OMP (``segclip.analysis.omp.label_directions``: one (P, d) x (d, V) product per step, the chosen
  words' QR updated incrementally, coefficients by one triangular solve at the recorded sparsities), on a subset;
- the same batched selection with the least-squares problem re-solved from scratch at every step (and segclip's OMP
  on the same subset, back to back, for a like-for-like ratio on a shared machine);
- scikit-learn's ``orthogonal_mp`` (one target at a time, Cholesky updates; the Gram matrix of 30,000 words is not
  precomputed, it would take 7 GB), on a smaller subset;

and extrapolates each linearly in the number of directions (the batches are independent). On CUDA (when present)
the segclip row is timed on the GPU too and the last line uses it; otherwise the last line is the CPU estimate.

    python benchmarks/label.py      # last line: label_rn50x16_pairs_seconds_estimate: <s> (goal: <= 3600 on one GPU)
"""
from __future__ import annotations

import argparse
import time

import torch

from segclip.analysis.omp import label_directions, omp

PAIRS, DIM, VOCABULARY, WORDS = 3072 * 48, 768, 30000, 64
RECORD = (1, 2, 4, 8, 16, 32, 64)


def resolved_omp(targets: torch.Tensor, dictionary: torch.Tensor, atoms: int) -> torch.Tensor:
    """Batched OMP that re-solves min |A_j c - y| from scratch (batched lstsq) after every selection."""
    residual = targets.clone()
    index = torch.zeros(len(targets), atoms, dtype=torch.long)
    for j in range(atoms):
        scores = (residual @ dictionary.T).abs_()
        if j:
            scores.scatter_(1, index[:, :j], -1)
        index[:, j] = scores.argmax(1)
        chosen = dictionary[index[:, :j + 1]].transpose(1, 2)  # (P, d, j + 1)
        coefficients = torch.linalg.lstsq(chosen, targets[..., None]).solution
        residual = targets - (chosen @ coefficients)[..., 0]
    return index


def timed(function, *args, **kwargs) -> tuple[float, object]:
    start = time.perf_counter()
    out = function(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--directions", type=int, default=2048, help="directions timed with segclip's OMP.")
    parser.add_argument("--resolved-directions", type=int, default=256, help="directions for the re-solving OMP.")
    parser.add_argument("--sklearn-directions", type=int, default=16, help="directions for scikit-learn (0: skip).")
    parser.add_argument("--chunk", type=int, default=1024, help="directions per OMP batch.")
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    words = torch.nn.functional.normalize(torch.randn(VOCABULARY, DIM, generator=generator), dim=-1)
    directions = torch.nn.functional.normalize(torch.randn(args.directions, DIM, generator=generator), dim=-1)

    rows = []  # (method, device, directions, seconds)
    seconds, (index, _) = timed(label_directions, directions, words, WORDS, RECORD, args.chunk)
    rows.append(("segclip batched OMP, incremental QR", "cpu", args.directions, seconds))
    subset = directions[:args.resolved_directions]
    seconds, _ = timed(label_directions, subset, words, WORDS, RECORD, args.chunk)
    rows.append(("segclip batched OMP, same subset", "cpu", len(subset), seconds))
    seconds, resolved = timed(resolved_omp, subset, words, WORDS)
    rows.append(("batched, least squares re-solved per step", "cpu", len(subset), seconds))
    agree = (resolved == index[:len(subset)]).all(1).double().mean().item()
    if args.sklearn_directions:
        from sklearn.linear_model import orthogonal_mp

        subset = directions[:args.sklearn_directions].double().numpy()
        seconds, _ = timed(orthogonal_mp, words.double().numpy().T, subset.T, n_nonzero_coefs=WORDS)
        rows.append(("scikit-learn orthogonal_mp (per target)", "cpu", len(subset), seconds))
    if torch.cuda.is_available():
        cuda_words, cuda_directions = words.cuda(), directions.cuda()
        omp(cuda_directions[:64], cuda_words, WORDS)  # warm-up
        seconds, _ = timed(label_directions, cuda_directions, cuda_words, WORDS, RECORD, args.chunk)
        rows.append(("segclip batched OMP, incremental QR", torch.cuda.get_device_name(), args.directions, seconds))

    flops = 2 * DIM * VOCABULARY * WORDS  # the selection products, per direction
    base = rows[0][3] / rows[0][2]
    print(f"OMP: d = {DIM}, vocabulary = {VOCABULARY}, m = {WORDS}, records {list(RECORD)}; "
          f"torch threads {torch.get_num_threads()}; all pairs of RN50x16 = {PAIRS:,} directions")
    print(f"{'method':<44} {'device':<10} {'dirs':>6} {'seconds':>9} {'dirs/s':>8} {'GFLOP/s':>8} "
          f"{'all pairs (h)':>13} {'x segclip cpu':>13}")
    for method, device, count, seconds in rows:
        per = seconds / count
        print(f"{method:<44} {device[:10]:<10} {count:>6} {seconds:>9.2f} {1 / per:>8.1f} {flops / per / 1e9:>8.1f} "
              f"{PAIRS * per / 3600:>13.2f} {per / base:>13.2f}")
    print(f"same words chosen by the incremental and the re-solving OMP: {100 * agree:.1f}% of directions")
    print(f"selection work for all pairs: {PAIRS * flops / 1e12:.0f} TFLOP (fp32)")
    _, device, count, seconds = rows[-1] if torch.cuda.is_available() else rows[0]
    print(f"estimate below: segclip's OMP measured on {device}, extrapolated linearly from {count} directions")
    print(f"label_rn50x16_pairs_seconds_estimate: {PAIRS * seconds / count:.0f} (goal: <= 3600 on one GPU)")


if __name__ == "__main__":
    main()
