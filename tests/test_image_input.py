"""server/images.py: a connection's images are checked in worker threads while the event loop runs
on, handed to the engine slot in the order they were sent, and acknowledged once in force."""

from __future__ import annotations

import asyncio
import threading
import time
from types import SimpleNamespace

import pytest

from assistant.images import CorruptImage, ImagesNotSupported, PreparedImage
from server.images import MAX_WAITING, ImageInput, image_bytes


def prepared(name: bytes) -> PreparedImage:
    return PreparedImage(pixels=name, width=len(name), height=1, format="PNG")


class FakeSlot:
    """A SlotHandle as ImageInput uses it: checks take `check_s` in whatever thread calls them."""

    def __init__(self, check_s: float = 0.05, takes_images: bool = True):
        self.takes_images = takes_images
        self.check_s = check_s
        self.scheduler = SimpleNamespace(ticks=0)
        self.status = "none"
        self.shown: list[bytes | None] = []
        self.threads: list[str] = []

    def check_image(self, data: bytes) -> PreparedImage:
        if not self.takes_images:
            raise ImagesNotSupported("this model (fake) does not take images")
        self.threads.append(threading.current_thread().name)
        time.sleep(self.check_s)
        if data == b"bad":
            raise CorruptImage("the image cannot be read")
        return prepared(data)

    def set_image(self, image, start_frame=None) -> None:
        self.shown.append(None if image is None else image.pixels)

    def image_status(self) -> str:
        return self.status


def recording_input(slot: FakeSlot) -> tuple[ImageInput, list]:
    heard: list = []
    images = ImageInput(
        slot,
        accepted=lambda tag, image: heard.append(("accepted", tag)),
        shown=lambda tag, image: heard.append(("shown", tag)),
        removed=lambda tag: heard.append(("removed", tag)),
        refused=lambda tag, error: heard.append(("refused", tag, error.code)),
    )
    return images, heard


async def settle(images: ImageInput) -> None:
    while images._running is not None or images._waiting:
        await asyncio.sleep(0.01)


async def test_checks_run_in_worker_threads_while_the_event_loop_runs_on():
    slot = FakeSlot(check_s=0.3)
    images, heard = recording_input(slot)
    ticks = 0

    async def clock() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    running = asyncio.create_task(clock())
    images.show(b"a", "a")
    await settle(images)
    running.cancel()
    assert slot.threads and all(name.startswith("image-check") for name in slot.threads)
    assert ticks >= 15  # the loop kept its 10 ms beat through a 300 ms check
    assert heard == [("accepted", "a")] and slot.shown == [b"a"]


async def test_images_are_handed_over_in_order_and_a_refused_one_changes_nothing():
    slot = FakeSlot()
    images, heard = recording_input(slot)
    for name in (b"a", b"bad", b"b"):
        images.show(name, name)
    await settle(images)
    assert heard == [("accepted", b"a"), ("refused", b"bad", "corrupt_image"), ("accepted", b"b")]
    assert slot.shown == [b"a", b"b"]


async def test_the_acknowledgement_waits_for_the_tick_and_the_encode():
    slot = FakeSlot()
    slot.status = "set"  # an older image is in force: its status must not acknowledge the new one
    images, heard = recording_input(slot)
    images.show(b"a", "a")
    await settle(images)
    images.on_frame()  # the tick that hands it to the engine has not run yet
    slot.scheduler.ticks += 1
    slot.status = "encoding"
    images.on_frame()
    assert heard == [("accepted", "a")]
    slot.status = "set"
    images.on_frame()
    images.on_frame()
    assert heard == [("accepted", "a"), ("shown", "a")]


async def test_a_removal_drops_the_images_sent_before_it_and_is_acknowledged():
    slot = FakeSlot(check_s=0.1)
    images, heard = recording_input(slot)
    images.show(b"a", "a")
    images.show(b"b", "b")
    images.remove("off")
    await settle(images)
    assert slot.shown == [None]  # neither a (being checked) nor b (waiting) reaches the engine
    slot.scheduler.ticks += 1
    images.on_frame()
    assert heard == [("removed", "off")]


async def test_too_many_waiting_images_and_a_model_without_vision_are_refused_at_once():
    slot = FakeSlot()
    images, heard = recording_input(slot)
    for i in range(MAX_WAITING + 2):  # one checking, MAX_WAITING waiting, one too many
        images.show(b"x%d" % i, i)
    assert heard == [("refused", MAX_WAITING + 1, "rate_limited")]
    await settle(images)
    blind, heard = recording_input(FakeSlot(takes_images=False))
    blind.show(b"a", "a")
    assert heard == [("refused", "a", "images_not_supported")]


async def test_a_closed_input_answers_nothing_more():
    slot = FakeSlot()
    images, heard = recording_input(slot)
    images.show(b"a", "a")
    images.close()
    await asyncio.sleep(0.2)
    assert heard == [] and slot.shown == []


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"\x89PNG", b"\x89PNG"),
        ("iVBORw==", b"\x89PNG"),
        ("data:image/png;base64,iVBORw==", b"\x89PNG"),
    ],
)
def test_image_bytes_take_bytes_base64_or_a_data_url(data, expected):
    assert image_bytes(data) == expected


@pytest.mark.parametrize(
    ("data", "code"),
    [
        ("not base64!", "corrupt_image"),
        ("data:text/plain;base64,aGk=", "unsupported_image_type"),
        ("data:image/png,raw", "corrupt_image"),
    ],
)
def test_image_bytes_refuse_what_is_not_an_image_file(data, code):
    with pytest.raises(Exception) as raised:
        image_bytes(data)
    assert raised.value.code == code
