"""Images on `/api/chat` as Kyutai's MoshiVis clients send them: the query string of their web client
(`xa_start=16`, `image_resolution`, ...) and the image file as the first message (kind 0x08), against
the tiny random MoshiVis of tests/data. What the model says changes from step `xa_start` on; a bad
image is answered with an error message (0x05) naming its code, and the conversation goes on.

The sessions are greedy and hear silence (no audio is sent: the server feeds the model silence), so
two of them say the same thing piece for piece until an image makes them differ.
"""

from __future__ import annotations

import asyncio
import time

import pytest
from image_utils import BAD_IMAGES, IMAGE_A, vision_server_running
from moshi_client import MoshiChatClient
from server_utils import start_server
from websockets.asyncio.client import connect

pytestmark = pytest.mark.timeout(300)
# What MoshiVis' web client sends with an image (values of its defaults), greedy here.
QUERY = (
    "text_temperature=0&text_topk=25&audio_temperature=0&audio_topk=250&pad_mult=0&text_seed=1"
    "&audio_seed=1&repetition_penalty_context=64&repetition_penalty=1&image_resolution=448"
    "&center_crop=0&text_temperature_gating_influence=0"
)


@pytest.fixture(scope="module")
def vision_server():
    with vision_server_running() as address:
        yield address


async def chat(
    address, query: str, frames: int, first: tuple[bytes, ...] = (), later: tuple[bytes, ...] = ()
):
    """One conversation: `first` sent before anything else, `later` 8 frames after the handshake;
    returns the client once `frames` audio messages arrived (it has the text pieces and errors)."""
    async with connect(f"ws://{address.host}:{address.port}/api/chat?{query}", max_size=None) as ws:
        for message in first:
            await ws.send(message)
        client = MoshiChatClient(ws)
        await client.wait_handshake(30)
        deadline = time.monotonic() + 60
        while len(client.audio) < frames:
            assert time.monotonic() < deadline and client.closed is None, (client.errors, client.closed)
            if later and len(client.audio) >= 8:
                for message in later:
                    await ws.send(message)
                later = ()
            await asyncio.sleep(0.01)
    return client


def pieces(client: MoshiChatClient, frames: int) -> list[tuple[int, str]]:
    """(frame, text piece) of the first `frames` frames."""
    return [(f, t) for f, (_, t) in zip(client.text_frames, client.texts, strict=True) if f <= frames]


async def test_the_moshivis_clients_first_message_image_changes_what_is_said_from_xa_start(vision_server):
    plain = await chat(vision_server, QUERY + "&xa_start=16", 40)
    again = await chat(vision_server, QUERY + "&xa_start=16", 40)
    assert pieces(again, 40) == pieces(plain, 40) != []
    seen = await chat(vision_server, QUERY + "&xa_start=16", 40, first=(b"\x08" + IMAGE_A,))
    assert not seen.errors
    before = [(f, t) for f, t in pieces(plain, 40) if f <= 16]
    assert [(f, t) for f, t in pieces(seen, 40) if f <= 16] == before  # not before step 16
    assert pieces(seen, 40) != pieces(plain, 40)
    late = await chat(vision_server, QUERY + "&xa_start=24", 40, first=(b"\x08" + IMAGE_A,))
    until_24 = [(f, t) for f, t in pieces(plain, 40) if f <= 24]
    assert [(f, t) for f, t in pieces(late, 40) if f <= 24] == until_24
    assert pieces(late, 40) != pieces(plain, 40)


async def test_bad_images_are_answered_with_their_code_and_the_conversation_goes_on(vision_server):
    bad = tuple(b"\x08" + data for _, data, _ in BAD_IMAGES)
    too_big = b"\x08\x89PNG\r\n\x1a\n" + bytes(11 << 20)  # over 1 MiB (fine for an image) and 10 MiB
    too_big_audio = b"\x01" + bytes((1 << 20) + 10)
    client = await chat(vision_server, QUERY, 30, later=(*bad, too_big, too_big_audio))
    codes = [error.split(":")[0] for error in client.errors]
    # The images are answered after their checks, in the order they were sent; the audio at once.
    assert [c for c in codes if c != "message_too_large"] == [
        *(c for _, _, c in BAD_IMAGES),
        "image_too_large",
    ]
    assert codes.count("message_too_large") == 1
    assert len(client.audio) >= 30 and client.closed is None


async def test_a_bad_xa_start_is_refused_before_the_handshake(vision_server):
    url = f"ws://{vision_server.host}:{vision_server.port}/api/chat?xa_start=soon"
    async with connect(url) as ws:
        client = MoshiChatClient(ws)
        await client.wait_closed()
    assert ws.close_code == 1008 and client.handshake_at is None
    assert client.errors == ["xa_start must be an integer, got 'soon'"]


async def test_a_model_without_vision_answers_images_not_supported_and_goes_on():
    with start_server("--backend", "scripted") as address:
        client = await chat(address, "", 16, first=(b"\x08" + IMAGE_A,))
    [error] = client.errors
    assert error.startswith("images_not_supported: this model (")
    assert len(client.audio) >= 16
