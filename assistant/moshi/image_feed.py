"""Per-slot images of a vision engine: validation, queued encodes spread over frame ticks, and K/V.

A slot's new image is encoded (SigLIP, projection, keys and values) like a prompt is prefilled:
after the tick's live step, in the frame loop's thread, a stage at a time (the embeddings, one
encoder layer, the projection) within the tick's spare time, so the live rows never wait for it.
When the last stage is done the slot's row gets the K/V and the image is in force from the row's
next step (or from its `start` step, Kyutai's `xa_start`, if that is later). Until then the row
keeps what it had: no image, or the previous image. Removing an image takes effect at the next step.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import torch

from assistant.images import PreparedImage, prepare_image
from assistant.moshi.vision_lm import VisionStreamingLM
from audio.frames import FRAME_MS

log = logging.getLogger(__name__)

DEFAULT_IMAGE_START = 16  # frames (1.28 s) after a conversation starts, as Kyutai's MoshiVis client


class ImageJob:
    """One image's encode, advanced a stage at a time; `keys` / `values` (1, H, N, hd) once done."""

    def __init__(self, lm: VisionStreamingLM, image: PreparedImage, start: int):
        self.lm = lm
        self.start = start
        self._stages = lm.vision.encoder.stages(image.pixels)
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None

    @property
    def done(self) -> bool:
        return self.keys is not None

    def advance(self) -> None:
        """Run the next stage (the last one also projects the image's keys and values)."""
        tokens = next(self._stages)
        if tokens is not None:
            self.keys, self.values = self.lm.vision.cross.keys_values(tokens, self.lm.dtype)


class ImageFeed:
    """The pending encodes of an engine's slots and the figures of what they cost."""

    def __init__(self, lm: VisionStreamingLM, default_start: int = DEFAULT_IMAGE_START):
        if default_start < 0:
            raise ValueError(f"an image's start frame must be >= 0, got {default_start}")
        self.lm = lm
        self.default_start = int(default_start)
        self.jobs: dict[int, ImageJob] = {}  # slot -> its newest image's encode, oldest slot first
        self.stats = {"images": 0, "stages": 0, "ms": 0.0}
        self._ms_per_stage: float | None = None  # measured cost of a stage (moving average)

    @property
    def image_size(self) -> int:
        return self.lm.vision.image_size

    def check(self, data: bytes) -> PreparedImage:
        """Validate and prepare `data` for this model (any thread; raises an ImageError subclass)."""
        return prepare_image(data, self.image_size)

    def queue(self, slot: int, image: PreparedImage, start: int | None) -> None:
        """Encode `image` for `slot` in the coming ticks (replacing any encode still pending for it)."""
        start = self.default_start if start is None else int(start)
        if start < 0:
            raise ValueError(f"an image's start frame must be >= 0, got {start}")
        self.jobs.pop(slot, None)
        self.jobs[slot] = ImageJob(self.lm, image, start)

    def forget(self, slot: int) -> None:
        self.jobs.pop(slot, None)

    def advance(self, row_of: Callable[[int], int | None], budget_ms: float | None) -> float:
        """Run pending encodes; budget_ms None: all of them now. Otherwise stages while the next one
        is expected to fit `budget_ms` (at least one per call, so every image gets in). Returns ms spent."""
        t0 = time.perf_counter()
        ran = False
        for slot in list(self.jobs):
            job = self.jobs[slot]
            try:
                while not job.done:
                    spent = (time.perf_counter() - t0) * 1000
                    if budget_ms is not None and ran and spent + (self._ms_per_stage or 0.0) > budget_ms:
                        break
                    self._timed_stage(job)
                    ran = True
            except Exception:  # this image only: the slot keeps its conversation (and its old image)
                log.exception("encoding the image of slot %d failed; the slot keeps its previous image", slot)
                del self.jobs[slot]
                continue
            if not job.done:
                break
            row = row_of(slot)
            if row is not None:  # a held slot has no row yet: `place` puts it in when it has one
                self.place(slot, row)
        spent = (time.perf_counter() - t0) * 1000
        self.stats["ms"] += spent
        return spent

    def place(self, slot: int, row: int) -> None:
        """Give `row` the image of `slot` if its encode is done (it counts from the row's next step)."""
        job = self.jobs.get(slot)
        if job is not None and job.done:
            del self.jobs[slot]
            self.lm.set_image(row, job.keys, job.values, job.start)
            self.stats["images"] += 1

    def _timed_stage(self, job: ImageJob) -> None:
        t0 = time.perf_counter()
        job.advance()
        if self.lm.device.type == "cuda":
            torch.cuda.synchronize(self.lm.device)
        ms = (time.perf_counter() - t0) * 1000
        old = self._ms_per_stage
        self._ms_per_stage = ms if old is None else 0.7 * old + 0.3 * ms
        self.stats["stages"] += 1


class ImageSlots:
    """The image half of MoshiEngine's API (a mixin): it needs `images` (an ImageFeed, or None for
    a model without vision), `lm`, `live`, `row_of(slot)` and the Engine base's checks."""

    images: ImageFeed | None

    @property
    def takes_images(self) -> bool:
        return self.images is not None

    def check_image(self, data: bytes) -> PreparedImage:
        if self.images is None:
            return super().check_image(data)
        return self.images.check(data)

    def set_image(self, slot: int, image: PreparedImage | None, *, start_frame: int | None = None) -> None:
        """Queue `image`'s encode for `slot` (in force from the first step after it is encoded, and
        not before `start_frame`); None removes the slot's image from its next step."""
        if self.images is None:
            return super().set_image(slot, image, start_frame=start_frame)
        self._check_slot(slot)
        if not self.live[slot]:
            raise RuntimeError(f"slot {slot} is not open")
        if image is None:
            self.images.forget(slot)
            row = self.row_of(slot)
            if row is not None:
                self.lm.clear_image(row)
            return
        self.images.queue(slot, image, start_frame)

    def image_status(self, slot: int) -> str:
        if self.images is None:
            return "none"
        if slot in self.images.jobs:
            return "encoding"
        row = self.row_of(slot)
        return "set" if row is not None and self.lm.row_has_image(row) else "none"

    def _advance_images(self, tick_start: float, all_now: bool) -> float:
        """Encode pending images after this tick's live step: all now, or within half the frame's spare time."""
        if self.images is None or not self.images.jobs:
            return 0.0
        spare_ms = FRAME_MS - (time.perf_counter() - tick_start) * 1000
        return self.images.advance(self.row_of, None if all_now else max(0.0, spare_ms) * 0.5)
