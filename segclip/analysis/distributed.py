"""The analyses' pass over an image list on Lightning: several processes (DDP over devices and nodes), DataLoader
workers, one resumable checkpoint per process, and an exact merge of the accumulators on rank 0.

Sharding is by whole batches, strided: the image list is cut into batches of ``batch_size`` consecutive images
(as :func:`~segclip.analysis.stream.run_pass` cuts it) and process ``r`` of ``W`` takes batches ``r, r + W,
r + 2W, ...``. Every batch therefore holds the same images as in a one-process run, so every trace is the same
and the merged state equals the one-process state: per-image rows and top-k lists (ties by image index)
bit for bit, float64 sums to round-off (the partial sums are added in another order).

DataLoader workers read, resize (CLIP's short side + centre crop) and normalise the images; the module only
moves the batch to the device and feeds the trace to the accumulator. After the loop returns, every process (one
with no batch left included: Lightning skips its loop hooks) sends its state to rank 0
(:func:`segclip.process.gather_to_primary`), which merges them in rank order with the accumulator's ``merge``.
Trainer, progress bar and process options are :mod:`segclip.process`'s.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader, Dataset, Sampler

from segclip.analysis.stream import Mergeable, images_digest
from segclip.config import check_positive, option
from segclip.core.trace import HookSpec
from segclip.data.images import read_image
from segclip.data.preprocess import clip_batch
from segclip.errors import ConfigError, ImageError
from segclip.io import atomic_save_tensors, read_tensors
from segclip.models.loading import CLIPResNet
from segclip.process import ProcessOptions, gather_to_primary, make_trainer

log = logging.getLogger(__name__)

AccumulatorFactory = Callable[[CLIPResNet], Mergeable]


class ImageList(Dataset):
    """Images of a list, read and preprocessed as CLIP does: item ``i`` is ``(i, (3, S, S) float32)``."""

    def __init__(self, paths: Sequence[Path], image_size: int):
        self.paths, self.image_size = [Path(p) for p in paths], image_size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor]:
        return index, clip_batch([read_image(self.paths[index])], self.image_size)[0]


def collate_images(items: list[tuple[int, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """[(index, (3, S, S))] -> (B,) long indices, (B, 3, S, S) images."""
    return torch.tensor([i for i, _ in items]), torch.stack([image for _, image in items])


class ShardBatches(Sampler[list[int]]):
    """The batches of one process: batch ``b`` holds images ``b * batch_size ..`` and goes to process
    ``b % world_size``; the first ``skip`` batches of this process are left out (resumed from a checkpoint).

    Example:
        >>> list(ShardBatches(7, batch_size=2, rank=1, world_size=2))
        [[2, 3], [6]]
    """

    def __init__(self, count: int, batch_size: int, rank: int = 0, world_size: int = 1, skip: int = 0):
        self.count, self.batch_size, self.rank, self.world_size, self.skip = count, batch_size, rank, world_size, skip

    def batches(self) -> list[int]:
        """Indices of this process's batches, all of them (skipped ones included)."""
        return list(range(self.rank, -(-self.count // self.batch_size), self.world_size))

    def __iter__(self) -> Iterator[list[int]]:
        for b in self.batches()[self.skip:]:
            yield list(range(b * self.batch_size, min((b + 1) * self.batch_size, self.count)))

    def __len__(self) -> int:
        return max(0, len(self.batches()) - self.skip)


def rank_checkpoint(checkpoint: Path, rank: int, world_size: int) -> Path:
    """``run.partial.safetensors`` -> ``run.partial.rank1of2.safetensors``: one file per process."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(f"{checkpoint.name.removesuffix('.safetensors')}.rank{rank}of{world_size}"
                                ".safetensors")


def remove_checkpoints(checkpoint: Path, world_size: int) -> None:
    """Delete the per-process checkpoints of a finished pass (:func:`rank_checkpoint` for every rank)."""
    for rank in range(world_size):
        rank_checkpoint(checkpoint, rank, world_size).unlink(missing_ok=True)


class AccumulatorTask(L.LightningModule):
    """Feed every batch's trace to an accumulator; checkpoint it every ``checkpoint_every`` seconds (and at the end,
    and when an image is unreadable: :class:`SaveOnImageError`); merge on rank 0.

    Args:
        model: the CLIP-ResNet (Lightning moves it to the process's device).
        make_accumulator: builds an empty accumulator for the model (called on each process once the model is on
            its device, and on rank 0 once per other process's state).
        key: what the pass computes (with model, images, batch size, rank and world size it keys the checkpoint).
        paths: the image list (for the checkpoint key).
        batch_size: images per batch.
        checkpoint: the checkpoint path of a one-process run; each process writes :func:`rank_checkpoint`.
        checkpoint_every: seconds between this process's checkpoints (0: after every batch).
        hooks: forwarded to :meth:`CLIPResNet.trace`.

    Attributes:
        accumulator: this process's state; after the pass, on rank 0, the merged state of all processes.
        resumed_batches: batches of this process restored from its checkpoint.
    """

    def __init__(self, model: CLIPResNet, make_accumulator: AccumulatorFactory, *, key: dict[str, Any],
                 paths: Sequence[Path], batch_size: int, checkpoint: Path | None = None,
                 checkpoint_every: float = 300.0, hooks: HookSpec | None = None):
        super().__init__()
        self.model, self.make_accumulator, self.hooks = model, make_accumulator, hooks
        self.key, self.paths, self.batch_size = key, list(paths), batch_size
        self.checkpoint, self.checkpoint_every = checkpoint, checkpoint_every
        self.saved_batches, self.saved_at = 0, time.monotonic()
        self.accumulator: Mergeable | None = None
        self.resumed_batches = self.done_batches = 0
        self.allow_zero_length_dataloader_with_multiple_devices = True  # a process may have no batch left

    def full_key(self) -> str:
        info = self.model.info
        return json.dumps({**self.key, "model": info.name, "weights": info.weights_hash,
                           "images": images_digest(self.paths), "count": len(self.paths),
                           "batch_size": self.batch_size, "rank": self.global_rank,
                           "world_size": self.trainer.world_size}, sort_keys=True, default=str)

    def done_images(self, batches: int) -> str:
        """:func:`~segclip.analysis.stream.images_digest` (names and sizes) of this process's first ``batches``."""
        sampler = ShardBatches(len(self.paths), self.batch_size, self.global_rank, self.trainer.world_size)
        done = [self.paths[i] for b, batch in enumerate(sampler) if b < batches for i in batch]
        return images_digest(done, sizes=True)

    def _path(self) -> Path | None:
        if self.checkpoint is None:
            return None
        return rank_checkpoint(self.checkpoint, self.global_rank, self.trainer.world_size)

    def prepare(self) -> int:
        """Build the accumulator and restore this process's checkpoint; returns the batches already done."""
        self.accumulator = self.make_accumulator(self.model)
        self.done_batches = 0
        path = self._path()
        if path is not None and path.is_file():
            saved = read_tensors(path)
            if saved is not None and saved[1].get("key") == self.full_key() and saved[1].get("done_images") == \
                    self.done_images(int(saved[1].get("done_batches", 0))):  # the images it holds: the same files
                self.accumulator.load_state_dict(saved[0])
                self.done_batches = int(saved[1]["done_batches"])
                log.info("rank %d resumes from %s: %d batches done", self.global_rank, path, self.done_batches)
            elif saved is not None:
                log.warning("checkpoint %s belongs to another run; rank %d starts over", path, self.global_rank)
        self.resumed_batches = self.saved_batches = self.done_batches
        self.saved_at = time.monotonic()
        return self.done_batches

    def save_progress(self) -> None:
        """Checkpoint this process's state unless the last checkpoint already holds it."""
        path = self._path()
        if path is not None and self.accumulator is not None and self.done_batches > self.saved_batches:
            atomic_save_tensors(path, self.accumulator.state_dict(),
                                {"key": self.full_key(), "done_batches": str(self.done_batches),
                                 "done_images": self.done_images(self.done_batches)})
        self.saved_batches, self.saved_at = self.done_batches, time.monotonic()

    def predict_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        indices, images = batch
        trace = self.model.trace(images.to(self.model.device, self.model.dtype), hooks=self.hooks)
        self.accumulator.update(trace, int(indices[0]))
        self.done_batches += 1
        if time.monotonic() - self.saved_at >= self.checkpoint_every:
            self.save_progress()

    def on_predict_epoch_end(self) -> None:
        self.save_progress()

    def progress_total(self) -> int:
        """Images this process still has to read (the progress bar's total)."""
        sampler = ShardBatches(len(self.paths), self.batch_size, self.global_rank, self.trainer.world_size,
                               self.resumed_batches)
        return sum(len(batch) for batch in sampler)

    @staticmethod
    def progress_count(batch: tuple[torch.Tensor, torch.Tensor]) -> int:
        return len(batch[0])

    def merge_processes(self) -> None:
        """After the loop, on every process (also one that had no batch): rank 0 merges every process's state in
        rank order; the others keep their own."""
        self.save_progress()
        state = {k: v.detach().cpu() for k, v in self.accumulator.state_dict().items()}
        gathered = gather_to_primary(state)
        if gathered is not None:
            for other_state in gathered[1:]:
                other = self.make_accumulator(self.model)
                other.load_state_dict(other_state)
                self.accumulator.merge(other)


class SaveOnImageError(Callback):
    """When an image turns out unreadable, checkpoint the batches the task finished (their state is whole: the
    error comes from the DataLoader, between steps), so that the rerun after the fix resumes there."""

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, ImageError) and isinstance(pl_module, AccumulatorTask):
            pl_module.save_progress()


class ImageListData(L.LightningDataModule):
    """This process's batches of an image list (:class:`ShardBatches`), decoded by ``num_workers`` workers."""

    def __init__(self, task: AccumulatorTask, num_workers: int = 0):
        super().__init__()
        self.task, self.num_workers = task, num_workers

    def predict_dataloader(self) -> DataLoader:
        task = self.task
        skip = task.prepare()
        sampler = ShardBatches(len(task.paths), task.batch_size, task.global_rank, self.trainer.world_size, skip)
        return DataLoader(ImageList(task.paths, task.model.info.image_size), batch_sampler=sampler,
                          collate_fn=collate_images, num_workers=self.num_workers,
                          persistent_workers=False, pin_memory=False)


@dataclass(frozen=True, kw_only=True)
class ProcessConfig(ProcessOptions):
    """The process options of an analysis pass (:class:`segclip.process.ProcessOptions`) and how often each process
    checkpoints (the ``--checkpoint-every`` flag of ``calibrate`` and ``analyze``).

    Example:
        >>> ProcessConfig(devices=2).world_size
        2
        >>> ProcessConfig(checkpoint_every=-1)
        Traceback (most recent call last):
        ...
        segclip.errors.ConfigError: --checkpoint-every must be at least 0, got -1.0.
    """

    checkpoint_every: float = option(300.0, help="seconds between the checkpoints a pass writes to resume from "
                                                 "(also written at the end and when an image is unreadable; 0: "
                                                 "after every batch) (default: 300).")

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive(self, "checkpoint_every", allow_zero=True)


@dataclass(frozen=True)
class PassResult:
    """What :func:`run_distributed_pass` returns on every process.

    Attributes:
        accumulator: on rank 0 the merged state of all processes; elsewhere this process's own shard.
        is_primary: True on rank 0 (the process that writes results).
        world_size: number of processes.
        resumed_batches: batches this process restored from its checkpoint.
    """

    accumulator: Mergeable
    is_primary: bool
    world_size: int
    resumed_batches: int


def run_distributed_pass(model: CLIPResNet, paths: Sequence[Path], make_accumulator: AccumulatorFactory, *,
                         key: dict[str, Any], devices: int = 1, num_nodes: int = 1, num_workers: int = 0,
                         batch_size: int = 8, checkpoint_every: float = 300.0, checkpoint: Path | None = None,
                         hooks: HookSpec | None = None, progress: bool = False) -> PassResult:
    """Run any mergeable accumulator over ``paths`` on ``devices x num_nodes`` processes; resumable per process.

    Under DDP (``devices * num_nodes > 1``) Lightning starts the other processes by running the calling script
    again; every process returns from this call, and only rank 0 (``is_primary``) should write results.

    Args:
        model: the loaded model; its device type picks the accelerator (CUDA -> one GPU per process).
        paths: the image list (index ``i`` is ``paths[i]``).
        make_accumulator: builds an empty accumulator for the model (e.g. ``lambda m: RunningStatistics(m.pool)``).
        key: what the pass computes (checkpoints of another key are ignored, with a warning).
        devices: processes per node. num_nodes: nodes.
        num_workers: DataLoader workers per process reading and resizing images (0: in the process).
        batch_size: images per batch (the unit of sharding; keep it to compare with a one-process run).
        checkpoint_every: seconds between each process's checkpoints (0: after every batch).
        checkpoint: checkpoint path; each process keeps ``*.rank<r>of<W>.safetensors`` next to it.
        hooks: forwarded to :meth:`CLIPResNet.trace`.
        progress: show a progress bar on stderr.

    Returns:
        The :class:`PassResult`.

    Raises:
        ConfigError: bad ``devices``, ``num_nodes``, ``num_workers`` or ``batch_size``.
        ImageError: an image is unreadable (each process checkpoints the batches it finished first).

    Example:
        >>> from segclip.models import load_model
        >>> from segclip.analysis.units import Embeddings
        >>> from segclip.models.loading import bundled_dir
        >>> model = load_model()
        >>> paths = [Path(bundled_dir()).parent / "example.jpg"] * 3
        >>> result = run_distributed_pass(model, paths, lambda m: Embeddings(3, m.info.embed_dim),
        ...                               key={"kind": "embeddings"}, batch_size=2)
        >>> result.accumulator.values.shape, result.is_primary
        (torch.Size([3, 64]), True)
    """
    if batch_size < 1 or num_workers < 0:
        raise ConfigError(f"--batch-size must be at least 1 and --num-workers at least 0, got {batch_size} and "
                          f"{num_workers}.")
    options = ProcessOptions(devices=devices, num_nodes=num_nodes, num_workers=num_workers)
    trainer = make_trainer(model.device, options, progress=progress, callbacks=[SaveOnImageError()])
    task = AccumulatorTask(model, make_accumulator, key=key, paths=paths, batch_size=batch_size,
                           checkpoint=checkpoint, checkpoint_every=checkpoint_every, hooks=hooks)
    trainer.predict(task, datamodule=ImageListData(task, num_workers), return_predictions=False)
    task.merge_processes()  # every process, idle ones included
    return PassResult(accumulator=task.accumulator, is_primary=trainer.global_rank == 0,
                      world_size=trainer.world_size, resumed_batches=task.resumed_batches)


def collect_statistics_distributed(model: CLIPResNet, paths: list[Path], *, top_k: int = 50, registers: bool = True,
                                   register_variant: str = "activations", top_fraction: float = 0.01,
                                   top_images: int = 10, batch_size: int = 8, checkpoint_every: float = 300.0,
                                   checkpoint: Path | None = None, devices: int = 1, num_nodes: int = 1,
                                   num_workers: int = 0, progress: bool = False):
    """:func:`~segclip.analysis.statistics.collect_statistics` on Lightning: same arguments plus ``devices``,
    ``num_nodes`` and ``num_workers``.

    Returns:
        On rank 0 the :class:`~segclip.analysis.statistics.Statistics` of all images (equal to the one-process
        ones: image lists and signs exactly, means and covariances to float64 round-off); None on other ranks.

    Raises:
        ImageError: an image is unreadable.
        ConfigError: bad process or batch options.
    """
    from segclip.analysis.statistics import RunningStatistics, pass_key

    result = run_distributed_pass(
        model, paths,
        lambda m: RunningStatistics(m.pool, top_k=top_k, registers=registers, register_variant=register_variant),
        key=pass_key(top_k, registers, register_variant),
        devices=devices, num_nodes=num_nodes, num_workers=num_workers, batch_size=batch_size,
        checkpoint_every=checkpoint_every, checkpoint=checkpoint, progress=progress)
    stats = result.accumulator.finalise(top_fraction=top_fraction, top_images=top_images) if result.is_primary \
        else None
    # the A.2 pass (RunningTopDeviations) ranks by the distance to the mean over all images: rank 0's, sent to all
    import torch.distributed as dist

    from segclip.analysis.statistics import RunningTopDeviations, a2_checkpoint_path, a2_key, add_a2

    mean = stats.mean_scalars.cpu() if stats is not None else None
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        box = [mean]
        dist.broadcast_object_list(box, src=0)
        mean = box[0]
    a2_checkpoint = None if checkpoint is None else a2_checkpoint_path(checkpoint)
    second = run_distributed_pass(
        model, paths, lambda m: RunningTopDeviations(m.pool, mean, top_k=top_k), key=a2_key(top_k, mean),
        devices=devices, num_nodes=num_nodes, num_workers=num_workers, batch_size=batch_size,
        checkpoint_every=checkpoint_every, checkpoint=a2_checkpoint, progress=progress)
    if not result.is_primary:
        return None
    add_a2(stats, second.accumulator)
    if a2_checkpoint is not None:
        remove_checkpoints(a2_checkpoint, second.world_size)
    stats.metadata = {"model": model.info.name, "weights_hash": model.info.weights_hash,
                      "image_folder": str(Path(paths[0]).parent.resolve()) if paths else "",
                      "images": [Path(p).name for p in paths], "register_variant": register_variant}
    return stats
