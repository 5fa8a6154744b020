"""Images on the native protocol (`/ws` `session.image`), against a server running the tiny random
MoshiVis of tests/data: what the assistant says changes from the frame after the image is in force,
bad images get typed errors while the session streams on, and a model without vision says so.

Every session here is greedy and hears silence (the client sends no audio: the server feeds the
model silence), so two sessions say the same thing frame for frame until an image makes them differ.
"""

from __future__ import annotations

import asyncio
import base64
import json

import pytest
from image_utils import BAD_IMAGES, IMAGE_A, MOSHIVIS_TINY, OVERSIZED_IMAGE
from server_utils import http_get, start_server
from websockets.asyncio.client import connect

pytestmark = pytest.mark.timeout(300)
GREEDY = {"temperature": 0, "text_temperature": 0}


@pytest.fixture(scope="module")
def vision_server():
    with start_server(
        "--backend",
        "moshi",
        "--model",
        str(MOSHIVIS_TINY),
        "--device",
        "cpu",
        "--no-compile",
        "--max-sessions",
        "2",
        startup_timeout_s=240,
    ) as address:
        assert json.loads(http_get(address, "/healthz")[2])["takes_images"] is True
        yield address


def image_event(data: bytes | None) -> str:
    return json.dumps(
        {"type": "session.image", "data": None if data is None else base64.b64encode(data).decode()}
    )


async def greedy_session(url: str, frames: int, script: dict[int, list[str | bytes]] | None = None):
    """A greedy session hearing silence for `frames` output frames; `script` {frame: messages} sends
    messages once that many frames have arrived (0: right after session.ready). Returns the frames
    (PCM16 bytes, one per 80 ms) and the events, each as (frames received before it, event)."""
    script = dict(script or {})
    audio: list[bytes] = []
    events: list[tuple[int, dict]] = []
    async with connect(url, max_size=None) as ws:
        await ws.send(json.dumps({"type": "session.start", "sample_rate": 24000, **GREEDY}))
        while len(audio) < frames:
            message = await asyncio.wait_for(ws.recv(), 30)
            if isinstance(message, bytes):
                audio.append(message)
            else:
                events.append((len(audio), json.loads(message)))
                if events[-1][1]["type"] != "session.ready":
                    continue
            for sent in script.pop(len(audio), []):
                await ws.send(sent)
        await ws.send(json.dumps({"type": "session.end"}))
    return audio, events


def of(events: list[tuple[int, dict]], kind: str) -> list[tuple[int, dict]]:
    return [(frame, e) for frame, e in events if e["type"] == kind]


def first_difference(a: list[bytes], b: list[bytes]) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), None)


async def test_an_image_mid_call_changes_what_is_said_from_the_frame_after_it_is_in_force(vision_server):
    url = vision_server.ws_url
    plain, _ = await greedy_session(url, 48)
    again, _ = await greedy_session(url, 48)
    assert again == plain  # the comparison below is exact, so the run must be
    shown, events = await greedy_session(url, 48, {24: [image_event(IMAGE_A)]})
    [(acked_at, updated)] = of(events, "session.image.updated")
    assert updated["image"] == {"width": 320, "height": 200, "mime_type": "image/png"}
    assert 24 <= acked_at < 40
    # Not a frame earlier than the acknowledgement says, and at once after it (the first frame or two
    # may come out the same by chance: the image changes most tokens of this model, not every one).
    assert shown[:acked_at] == plain[:acked_at]
    assert first_difference(shown, plain) <= acked_at + 2
    changed = sum(x != y for x, y in zip(shown[acked_at:], plain[acked_at:], strict=True))
    assert changed >= (48 - acked_at) // 2


async def test_an_image_at_the_start_counts_from_1_28_s_and_removing_it_is_acknowledged(vision_server):
    url = vision_server.ws_url
    plain, _ = await greedy_session(url, 40)
    shown, events = await greedy_session(url, 40, {0: [image_event(IMAGE_A)], 30: [image_event(None)]})
    updates = [(frame, e["image"]) for frame, e in of(events, "session.image.updated")]
    assert [image is not None for _, image in updates] == [True, False]
    assert updates[0][0] < 16 and 30 <= updates[1][0] < 36
    # Kyutai's client starts the image 16 frames (1.28 s) in; the engine does the same by default.
    assert first_difference(shown, plain) == 16


async def test_bad_images_get_typed_errors_and_the_session_streams_on(vision_server):
    bad = [image_event(data) for _, data, _ in BAD_IMAGES]
    not_base64 = json.dumps({"type": "session.image", "data": "this is not base64!"})
    wrong_url = json.dumps({"type": "session.image", "data": "data:text/plain;base64,aGVsbG8="})
    oversized = image_event(OVERSIZED_IMAGE)  # 2 MiB of JSON: dropped unread
    script = {
        4: bad,
        8: [not_base64, wrong_url, oversized],
        12: [image_event(IMAGE_A)],  # still works afterwards
    }
    audio, events = await greedy_session(vision_server.ws_url, 30, script)
    codes = [e["code"] for _, e in of(events, "error")]
    assert codes == [
        *(code for _, _, code in BAD_IMAGES),
        "corrupt_image",
        "unsupported_image_type",
        "image_too_large",
    ]
    assert all(e["message"] for _, e in of(events, "error"))
    assert len(audio) == 30
    [(_, updated)] = of(events, "session.image.updated")
    assert updated["image"]["width"] == 320


async def test_a_model_without_vision_refuses_images_by_name_and_goes_on():
    with start_server("--backend", "scripted") as address:
        health = json.loads(http_get(address, "/healthz")[2])
        audio, events = await greedy_session(address.ws_url, 12, {2: [image_event(IMAGE_A)]})
    assert health["takes_images"] is False
    [(_, error)] = of(events, "error")
    assert error["code"] == "images_not_supported" and f"({health['model']})" in error["message"]
    assert len(audio) == 12 and not of(events, "session.image.updated")


async def test_an_oversized_message_is_refused_unread_and_the_session_goes_on():
    with start_server("--backend", "scripted") as address:
        async with connect(address.ws_url, max_size=None) as ws:
            await ws.send(json.dumps({"type": "session.start", "sample_rate": 24000}))
            await ws.send(b"\x00" * ((1 << 20) + 2))
            await ws.send(json.dumps({"type": "session.update", "captions": False}))
            seen: list[str] = []
            while "session.updated" not in seen:
                message = await asyncio.wait_for(ws.recv(), 10)
                if isinstance(message, str):
                    event = json.loads(message)
                    seen.append(event["code"] if event["type"] == "error" else event["type"])
            assert "message_too_large" in seen
