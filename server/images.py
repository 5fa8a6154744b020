"""The images a client shows its conversation, for every protocol adapter: checked off the event
loop, handed to the engine in the order they were sent, acknowledged once the model sees them.

An adapter calls `show(data, tag)` with an image file's bytes (or their base64 text, or a base64
data URL) and `remove(tag)`, and `on_frame()` with every output frame of its conversation; the
callbacks it gave tell it, with the `tag` it passed:
- `accepted(tag, image)`: the image passed every check and goes to the engine to be encoded;
- `shown(tag, image)`: the model sees it (its keys and values are in the engine's row; at the start
  of a conversation it counts from the engine's start frame, 1.28 s in);
- `removed(tag)`: the model sees no image any more;
- `refused(tag, error)`: an `ImageError` whose `code` is the wire code; nothing changed.

Decoding the base64, reading the header, decoding and resizing the pixels (a few ms for a 448 px
JPEG, hundreds for a 40-megapixel photo) run in a small thread pool shared by all connections, one
check at a time per connection, never on the event loop: neither the frame clock nor the
connection's other messages wait for them. Images are checked and handed to the engine in the order
they were sent, and every one is answered; a refused image changes nothing (the model keeps what it
saw), a removal drops the images sent before it that are still being checked, and an image replaced
before the model saw it is never `shown`. At most `MAX_WAITING` images wait for their check.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from assistant.images import CorruptImage, ImageError, PreparedImage
from server.protocols.schema import image_data_start

log = logging.getLogger("assistant.server")

IMAGE_CHECK_THREADS = 2  # images checked at once in the whole process
_CHECKS = ThreadPoolExecutor(max_workers=IMAGE_CHECK_THREADS, thread_name_prefix="image-check")
MAX_WAITING = 4  # images of one connection waiting for their check; more are refused at once


class ImageCheckFailed(ImageError):
    """The server failed to check or encode an image (its fault, not the image's); the session goes on."""

    code = "internal_error"


class ImagesTooFast(ImageError):
    """More images than MAX_WAITING are waiting for their check."""

    code = "rate_limited"


def image_bytes(data: bytes | memoryview | str) -> bytes:
    """An image file's bytes from what a client sent: the bytes, their base64 text, or a base64
    data URL of an image type. Raises an ImageError subclass."""
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data)
    if data.startswith("data:"):
        data = data[image_data_start(data) :]
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise CorruptImage(f"the image is not valid base64: {exc}") from None


def _ignore(*_args: Any) -> None:
    pass


class ImageInput:
    """One connection's images, between its protocol adapter and its engine slot (a SlotHandle)."""

    def __init__(
        self,
        slot,
        *,
        start_frame: int | None = None,
        accepted: Callable[[Any, PreparedImage], None] = _ignore,
        shown: Callable[[Any, PreparedImage], None] = _ignore,
        removed: Callable[[Any], None] = _ignore,
        refused: Callable[[Any, ImageError], None] = _ignore,
    ):
        """start_frame: the conversation's step from which an image counts at the earliest (None:
        the engine's default; Kyutai's `xa_start`)."""
        self.slot = slot
        self.start_frame = start_frame
        self.accepted, self.shown, self.removed, self.refused = accepted, shown, removed, refused
        self._sent = 0  # requests (images and removals) so far: each image's number
        self._removed_at = 0  # the number of the last removal: images sent before it are dropped
        self._running: asyncio.Future | None = None  # this connection's check in the thread pool
        self._waiting: collections.deque[tuple[int, Any, bytes | memoryview | str]] = collections.deque()
        # (tag, image or None for a removal, the tick during which it was queued): not yet in force.
        self._awaiting: tuple[Any, PreparedImage | None, int] | None = None
        self.closed = False

    @property
    def takes_images(self) -> bool:
        return self.slot.takes_images

    def show(self, data: bytes | memoryview | str, tag: Any = None) -> None:
        """Check `data` in a worker thread, then show the model the image (replacing the one it sees)."""
        self._sent += 1
        if not self.slot.takes_images:
            try:
                self.slot.check_image(b"")  # a model without vision refuses at once, naming itself
            except ImageError as exc:
                self.refused(tag, exc)
            return
        if len(self._waiting) >= MAX_WAITING:
            self.refused(
                tag, ImagesTooFast(f"{MAX_WAITING} images are waiting to be checked; send one at a time")
            )
            return
        self._waiting.append((self._sent, tag, data))
        if self._running is None:
            self._check_next()

    def remove(self, tag: Any = None) -> None:
        """The model sees no image from its next step (images sent before this one are dropped)."""
        self._sent += 1
        self._removed_at = self._sent
        self._waiting.clear()
        self.slot.set_image(None)
        self._awaiting = (tag, None, self._tick())

    def on_frame(self) -> None:
        """Call with every output frame of the conversation: says `shown` / `removed` once in force."""
        if self._awaiting is None or self.closed:
            return
        tag, image, queued_at = self._awaiting
        if self._tick() <= queued_at:
            return  # the tick that hands the change to the engine has not run yet
        if image is None:
            self._awaiting = None
            self.removed(tag)
            return
        status = self.slot.image_status()
        if status == "encoding":
            return
        self._awaiting = None
        if status == "set":
            self.shown(tag, image)
        else:  # the encode failed (the engine logged why): the model sees no image
            self.refused(tag, ImageCheckFailed("the server failed to encode the image; the model sees none"))

    def close(self) -> None:
        """The connection is over: nothing more is checked or answered. The callbacks are dropped,
        so the adapter they belong to is freed by reference counting (no cycle through them)."""
        self.closed = True
        self._waiting.clear()
        self.accepted = self.shown = self.refused = self.removed = _ignore

    # -- the checks ----------------------------------------------------------------------------------
    def _tick(self) -> int:
        return self.slot.scheduler.ticks

    def _check_next(self) -> None:
        number, tag, data = self._waiting.popleft()
        loop = asyncio.get_running_loop()
        self._running = loop.run_in_executor(_CHECKS, self._prepare, data)
        self._running.add_done_callback(functools.partial(self._checked, number, tag))

    def _prepare(self, data: bytes | memoryview | str) -> PreparedImage:
        """In a worker thread: the bytes, then the engine's own validation and pixels."""
        return self.slot.check_image(image_bytes(data))

    def _checked(self, number: int, tag: Any, future: asyncio.Future) -> None:
        self._running = None
        if self.closed or future.cancelled():
            return
        error = future.exception()
        if error is not None:
            if not isinstance(error, ImageError):
                log.error("checking an image failed", exc_info=error)
                error = ImageCheckFailed("the server failed to read this image")
            self.refused(tag, error)
        elif number > self._removed_at:  # else a removal sent after it has dropped it
            image = future.result()
            self.slot.set_image(image, start_frame=self.start_frame)
            self._awaiting = (tag, image, self._tick())
            self.accepted(tag, image)
        if self._waiting:
            self._check_next()
