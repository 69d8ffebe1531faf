"""The one process layer under every pass over a dataset: process options, rank checks, the trainer, the progress
bar, and the collectives that merge the processes' results.

Segmentation (``eval``, ``compare``, ``benchmark``, ``segment``) and the analyses' passes (``calibrate``,
``analyze``) run on Lightning (devices, DDP over GPUs and nodes, DataLoader workers). Everything that differs
between single- and multi-process runs lives here, so both stacks behave the same way:

- :class:`ProcessOptions` is the ``--devices`` / ``--num-nodes`` / ``--num-workers`` trio of every command.
- :func:`make_trainer` builds the one inference trainer; its :class:`ProgressBar` counts what the pass counts
  (images, not Lightning's batches), on stderr, and is closed before any table is printed.
- A process with no batch left (fewer batches than processes, or a resume after its share was done) never enters
  Lightning's loop hooks, so no collective may live inside them: :func:`all_reduce_sum`, :func:`gather_to_primary`
  and :func:`broadcast_from_primary` run after the loop returns, on every process, whether or not it had work.
- :func:`strided_indices` deals items to processes (``rank, rank + W, ...``): any count, zero included.
"""
from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from segclip.config import Config, check_positive, option


@dataclass(frozen=True, kw_only=True)
class ProcessOptions(Config):
    """How many processes run a pass over a dataset and how many DataLoader workers feed each.

    Example:
        >>> ProcessOptions(devices=2).world_size
        2
        >>> ProcessOptions(num_workers=-1)
        Traceback (most recent call last):
        ...
        segclip.errors.ConfigError: --num-workers must be at least 0, got -1.
    """

    devices: int = option(1, help="processes (devices) per node; DDP when devices x num_nodes > 1 (gloo on CPU, "
                                  "one GPU per process on CUDA) (default: 1).")
    num_nodes: int = option(1, help="machines (nodes); launch the same command on every node with Lightning's "
                                    "environment (MASTER_ADDR, MASTER_PORT, NODE_RANK) (default: 1).")
    num_workers: int = option(0, help="DataLoader workers per process that read and resize images (default: 0, "
                                      "in the process).")

    def __post_init__(self) -> None:
        super().__post_init__()  # field types (segclip.config.Config)
        check_positive(self, "devices", "num_nodes")
        check_positive(self, "num_workers", allow_zero=True)

    @property
    def world_size(self) -> int:
        return self.devices * self.num_nodes


def is_primary() -> bool:
    """Whether this process writes results: rank 0 of a running DDP group, or (before Lightning starts the others)
    the first process of the first node."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0


def _group_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def strided_indices(count: int, rank: int = 0, world_size: int = 1) -> list[int]:
    """The items of process ``rank``: ``rank, rank + world_size, ...`` below ``count`` (possibly none).

    Example:
        >>> strided_indices(5, 1, 3), strided_indices(1, 2, 3)
        ([1, 4], [])
    """
    return list(range(rank, count, world_size))


def all_reduce_sum(tensor: Any) -> Any:
    """``tensor`` summed over every process (in place on a CPU copy; unchanged in a one-process run)."""
    import torch.distributed as dist

    if _group_size() == 1:
        return tensor
    summed = tensor.detach().cpu().clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed.to(tensor.device)


def gather_to_primary(value: Any) -> list[Any] | None:
    """Every process's ``value`` in rank order on rank 0 (None elsewhere); ``[value]`` in a one-process run."""
    import torch.distributed as dist

    world = _group_size()
    if world == 1:
        return [value]
    gathered: list[Any] | None = [None] * world if dist.get_rank() == 0 else None
    dist.gather_object(value, gathered, dst=0)
    return gathered


def broadcast_from_primary(value: Any) -> Any:
    """``value`` as rank 0 has it, on every process (unchanged in a one-process run)."""
    import torch.distributed as dist

    if _group_size() == 1:
        return value
    box = [value if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def quiet_lightning(verbose: bool) -> None:
    """Lightning's INFO banners (devices, tips) only when ``verbose``."""
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def run_loop(loop: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
    """Run ``trainer.test`` / ``trainer.predict``; Lightning turns Ctrl-C into ``sys.exit(1)`` after its teardown,
    which becomes the KeyboardInterrupt the command line reports as resumable."""
    try:
        loop(*args, **kwargs)
    except SystemExit as err:
        raise KeyboardInterrupt from err


def _progress_bar_class():
    from lightning.pytorch.callbacks import Callback
    from tqdm.auto import tqdm

    class ProgressBar(Callback):
        """One stderr bar named for its unit, counting what the task counts (``task.progress_total()`` items, each
        batch ``task.progress_count(batch)``), on the first process only; closed when the loop ends, so that
        tables printed afterwards start on a clean line."""

        def __init__(self, unit: str = "images"):
            self.unit, self.bar = unit, None

        def _start(self, trainer: Any, module: Any) -> None:
            if trainer.global_rank != 0:
                return
            total = module.progress_total() if hasattr(module, "progress_total") else None
            note = f" (process 1 of {trainer.world_size})" if trainer.world_size > 1 else ""
            self.bar = tqdm(total=total, desc=self.unit + note, unit=self.unit.rstrip("s") or "item",
                            file=sys.stderr, dynamic_ncols=True, leave=False, smoothing=0)

        def _step(self, module: Any, batch: Any) -> None:
            if self.bar is not None:
                self.bar.update(module.progress_count(batch) if hasattr(module, "progress_count") else 1)

        def _end(self, *_: Any) -> None:
            if self.bar is not None:
                self.bar.close()
                self.bar = None

        def on_test_epoch_start(self, trainer, module):
            self._start(trainer, module)

        def on_predict_epoch_start(self, trainer, module):
            self._start(trainer, module)

        def on_test_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
            self._step(module, batch)

        def on_predict_batch_end(self, trainer, module, outputs, batch, batch_idx, dataloader_idx=0):
            self._step(module, batch)

        on_test_epoch_end = on_predict_epoch_end = on_exception = _end

    return ProgressBar


def make_trainer(device: Any, options: ProcessOptions | None = None, *, progress: bool = True,
                 unit: str = "images", callbacks: list[Any] | None = None) -> Any:
    """The inference Trainer of every pass: CPU or GPU, DDP when ``devices x num_nodes > 1``.

    Args:
        device: where the model lives (its type picks the accelerator; one process on ``cuda:i`` uses GPU i).
        options: the process options (default: one process).
        progress: show the stderr progress bar (only when segclip's progress bars are on, see
            :func:`segclip.config.progress_bars`).
        unit: what the bar counts (``images``, ``windows``, ...).
        callbacks: further Lightning callbacks.

    Returns:
        The trainer (no logger, no checkpoints, no Lightning sampler: tasks deal their own items).
    """
    import lightning as L

    from segclip.config import progress_enabled

    options = options or ProcessOptions()
    accelerator = "gpu" if device.type == "cuda" else "cpu"
    for message in (r".*treespec, LeafSpec.*", r".*custom batch sampler.*", r".*predict returned None.*",
                    r".*does not have many workers.*", r".*Total length of `.*` across ranks is zero.*"):
        warnings.filterwarnings("ignore", message=message)  # Lightning's notices: nothing a user can act on
    distributed = options.world_size > 1
    chosen: Any = options.devices if distributed or device.type != "cuda" else [device.index or 0]
    bars = [_progress_bar_class()(unit)] if progress and progress_enabled() else []
    return L.Trainer(accelerator=accelerator, devices=chosen, num_nodes=options.num_nodes,
                     strategy="ddp" if distributed else "auto", logger=False, enable_checkpointing=False,
                     enable_model_summary=False, enable_progress_bar=False, callbacks=bars + list(callbacks or []),
                     use_distributed_sampler=False, inference_mode=True)
