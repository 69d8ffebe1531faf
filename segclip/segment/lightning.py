"""Lightning wrappers: dataset-level evaluation (test) and segmentation (predict) over devices, DDP included.

The LightningModule is thin: each step calls :func:`~segclip.segment.pipeline.segment_images` (one batched trace
for all crops of the step's images, every method on it) and updates one
:class:`~segclip.segment.metric.SegmentationMetric` per method. Under DDP every image is seen exactly once
(an unrepeated distributed sampler, not Lightning's padding one), and the confusion matrices are summed across
processes after the loop (:func:`segclip.process.all_reduce_sum`, reached by every process, also one that had no
image), so a 2-process run gives the single-process confusion matrix. Trainer, progress bar and rank checks are
:mod:`segclip.process`'s.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from torch.utils.data import DataLoader, Dataset

from segclip.core.trace import RegisterIntervention
from segclip.data.images import collate_samples
from segclip.models.loading import CLIPResNet
from segclip.process import strided_indices
from segclip.segment.methods import SegmentationMethod
from segclip.segment.metric import SegmentationMetric
from segclip.segment.pipeline import LabelRule, Segmentation, segment_images
from segclip.segment.windows import SlidingWindowProtocol

# (image id, {method: Segmentation}, confusion stack (M, C, C) or None, the decoded (H, W, 3) image)
ImageCallback = Callable[[str, dict[str, Segmentation], torch.Tensor | None, Any], None]


class SegmentationTask(L.LightningModule):
    """Segment batches of images with several methods; score them against labels (test) or hand them out
    (predict).

    Args:
        model: the CLIP-ResNet, on the device the trainer uses (for DDP on GPUs: ``cuda:<local rank>``).
        methods: the built methods (their tensors on the model's device).
        protocol: the sliding-window protocol.
        num_classes: C, for the metrics.
        crops_per_pass: crops per backbone pass.
        intervention: the register intervention, or None.
        background_threshold: label pixels below this top probability as background (predict only).
        autocast: the backbone's autocast (``off``, ``bf16``, ``fp16``; :func:`~segclip.segment.pipeline.
            window_logits`).
        label_rule: how stitched logits become labels (:func:`~segclip.segment.pipeline.segment_images`), e.g. the
            benchmark suite's :class:`~segclip.segment.pipeline.QueryLabelRule`; None: temperature and arg-max.
        ignore_index: the target value whose pixels are not scored (255; 65535 for PC-459 and ADE-847).
        on_image: called per image with ``(id, {method: Segmentation}, confusion stack (M, C, C) or None,
            image)``, the image as the loader decoded it (writes partial results and outputs; nothing is decoded
            twice).

    Attributes:
        images_seen: images processed by this process.
        seconds: wall time of this process's test or predict loop.
    """

    def __init__(self, model: CLIPResNet, methods: Sequence[SegmentationMethod], protocol: SlidingWindowProtocol,
                 num_classes: int, *, crops_per_pass: int = 8, intervention: RegisterIntervention | None = None,
                 background_threshold: float | None = None, on_image: ImageCallback | None = None,
                 label_rule: LabelRule | None = None, autocast: str = "off", ignore_index: int = 255):
        super().__init__()
        self.model = model
        self.methods, self.protocol, self.num_classes = list(methods), protocol, num_classes
        self.crops_per_pass, self.intervention = crops_per_pass, intervention
        self.background_threshold, self.on_image, self.label_rule = background_threshold, on_image, label_rule
        self.autocast = autocast
        self.metrics = torch.nn.ModuleDict({m.name: SegmentationMetric(num_classes, ignore_index)
                                              for m in self.methods})
        self.images_seen, self.seconds, self._start = 0, 0.0, 0.0
        self.allow_zero_length_dataloader_with_multiple_devices = True  # fewer images than processes

    def _start_loop(self) -> None:
        self.images_seen, self._start = 0, time.perf_counter()

    def _segment(self, batch: dict[str, list[Any]]) -> list[dict[str, Segmentation]]:
        return segment_images(self.model, batch["image"], self.methods, self.protocol, self.crops_per_pass,
                              intervention=self.intervention, background_threshold=self.background_threshold,
                              label_rule=self.label_rule, autocast=self.autocast)

    def on_test_start(self) -> None:
        self._start_loop()

    def test_step(self, batch: dict[str, list[Any]], batch_idx: int) -> None:
        for image_id, label, image, result in zip(batch["id"], batch["label"], batch["image"], self._segment(batch)):
            target = torch.as_tensor(label, device=self.device).long()
            stack = []
            for method in self.methods:
                metric = self.metrics[method.name]
                before = metric.confusion.clone()
                metric.update(result[method.name].labels.to(self.device), target)
                stack.append(metric.confusion - before)
            if self.on_image is not None:
                self.on_image(image_id, result, torch.stack(stack).cpu(), image)
            self.images_seen += 1

    def on_test_epoch_end(self) -> None:
        self.seconds = time.perf_counter() - self._start

    def local_confusions(self) -> torch.Tensor:
        """(M, C, C) confusion matrices of this process's images, methods in order (zeros when it had none); sum
        them over processes with :func:`segclip.process.all_reduce_sum` after the loop."""
        return torch.stack([self.metrics[m.name].confusion for m in self.methods])

    def progress_total(self) -> int | None:
        """Images this process will segment (the progress bar's total)."""
        loaders = self.trainer.test_dataloaders if self.trainer.testing else self.trainer.predict_dataloaders
        loader = loaders[0] if isinstance(loaders, list) else loaders
        return len(loader.sampler) if loader is not None else None

    @staticmethod
    def progress_count(batch: dict[str, list[Any]]) -> int:
        return len(batch["id"])

    def on_predict_start(self) -> None:
        self._start_loop()

    def predict_step(self, batch: dict[str, list[Any]], batch_idx: int) -> list[str]:
        for image_id, image, result in zip(batch["id"], batch["image"], self._segment(batch)):
            if self.on_image is not None:
                self.on_image(image_id, result, None, image)
            self.images_seen += 1
        self.seconds = time.perf_counter() - self._start
        return list(batch["id"])


class SegmentationData(L.LightningDataModule):
    """Serves a dataset of ``{"id", "image"[, "label"]}`` samples in batches of images, each image once per run
    across all processes.

    Args:
        dataset: the dataset (PASCAL Context, the synthetic benchmark, an image folder, or a subset).
        images_per_step: images per step.
        num_workers: DataLoader worker processes.
    """

    def __init__(self, dataset: Dataset, images_per_step: int = 1, num_workers: int = 0):
        super().__init__()
        self.dataset, self.images_per_step, self.num_workers = dataset, images_per_step, num_workers

    def _loader(self) -> DataLoader:
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        # images rank, rank + W, ...: every image once, any count per process (none included)
        return DataLoader(self.dataset, batch_size=self.images_per_step,
                          sampler=strided_indices(len(self.dataset), rank, world), collate_fn=collate_samples,
                          num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        return self._loader()

    def predict_dataloader(self) -> DataLoader:
        return self._loader()
