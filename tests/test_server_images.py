"""Images on the native protocol (`/ws` `session.image`), against a server running the tiny random
MoshiVis of tests/data: what the assistant says changes from the frame after the image is in force,
bad images get typed errors while the session streams on, and a model without vision says so.

Every session here is greedy and hears silence (the client sends no audio: the server feeds the
model silence), so two sessions say the same thing frame for frame until an image makes them differ.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from image_utils import BAD_IMAGES, IMAGE_A, MOSHIVIS_TINY, OVERSIZED_IMAGE, vision_server_running
from PIL import Image
from server_utils import REPO, http_get, start_server
from websockets.asyncio.client import connect

from client.native import MAX_WIRE_IMAGE_BYTES, image_for_wire

pytestmark = pytest.mark.timeout(300)
GREEDY = {"temperature": 0, "text_temperature": 0}


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("record")


@pytest.fixture(scope="module")
def vision_server(record_dir):
    with vision_server_running("--record", str(record_dir), "--temperature", "0") as address:
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
    # Checked images are answered in the order sent; the oversized message (read by no one) at once.
    assert codes.count("image_too_large") == 1
    assert [c for c in codes if c != "image_too_large"] == [
        *(code for _, _, code in BAD_IMAGES),
        "corrupt_image",
        "unsupported_image_type",
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


def talk(server, tmp_path: Path, *args: str) -> str:
    """`assistant talk` on 4 s of silence (files, no devices); its plain output."""
    silence = tmp_path / "silence.wav"
    sf.write(silence, np.zeros(4 * 24000, dtype=np.int16), 24000, subtype="PCM_16")
    cmd = [sys.executable, "-m", "assistant", "talk", "--server", server.ws_url, "--input-file", str(silence)]
    cmd += ["--output-file", str(tmp_path / f"out{time.monotonic_ns()}.wav"), "--tail-seconds", "0", *args]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def recorded_reply(record_dir: Path, output: str) -> np.ndarray:
    """The assistant's side of the recording of the session `assistant talk` printed, int16 (n,)."""
    session = re.search(r"session (sess_\w+)", output).group(1)
    deadline = time.monotonic() + 10
    while not (record_dir / f"{session}.wav").exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # the recording's last flush
    pcm, _ = sf.read(record_dir / f"{session}.wav", dtype="int16")
    return pcm[:, 1]


def test_talk_shows_the_image_and_the_assistant_answers_differently(vision_server, record_dir, tmp_path):
    plain = talk(vision_server, tmp_path)
    shown = talk(vision_server, tmp_path, "--image", str(MOSHIVIS_TINY / "image_a.png"))
    assert "-- the assistant sees a 320 x 200 image" in shown and "sees" not in plain
    without, with_image = recorded_reply(record_dir, plain), recorded_reply(record_dir, shown)
    frames = min(len(without), len(with_image)) // 1920
    assert frames >= 30
    differ = [
        i
        for i in range(frames)
        if not np.array_equal(without[i * 1920 : (i + 1) * 1920], with_image[i * 1920 : (i + 1) * 1920])
    ]
    assert differ and differ[0] == 16  # from 1.28 s, as the engine starts every image by default


def test_talk_sends_a_large_image_at_448_px_and_a_small_one_as_it_is():
    assert image_for_wire(IMAGE_A) == IMAGE_A
    noise = np.random.default_rng(0).integers(0, 256, (1200, 900, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(noise).save(out, format="PNG")
    assert len(out.getvalue()) > MAX_WIRE_IMAGE_BYTES
    sent = Image.open(io.BytesIO(image_for_wire(out.getvalue())))
    assert (sent.format, sent.size) == ("JPEG", (448, 448))
