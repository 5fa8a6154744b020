"""`/api/chat` end to end against `assistant serve --backend scripted`: clients built as Kyutai's, and
Kyutai's own client code, get the handshake, the reply's voice and text, and its cut; eight at once;
Full-Duplex-Bench v1's Moshi flow gets an aligned output.wav; bad input and bad set-ups are refused
the way the originals refuse them, or with a typed close, and the server goes on; auth, Origin,
capacity, recording and metrics work as on every endpoint; `--moshi-ui` serves a client's build.

The scripted backend answers each user turn with assistant/data/reply.wav and its words, after the
VAD's end of turn (500 ms of silence), and stops in the frame where the user starts speaking again.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import io
import json
import sys
import threading
import time
import types

import numpy as np
import pytest
import soundfile as sf
from moshi_client import MoshiChatClient, read_clip, silence, voiced
from server_utils import http_get, metric, start_server
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from assistant.backends.scripted import DEFAULT_REPLY, ScriptedEngine, load_reply
from assistant.offline import run_offline
from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ
from server.app import add_arguments, config_from_args

TOKEN = "chat-token"
REPLY = load_reply()  # what the scripted backend says, and its words
Q1_SPEECH_END_S = 3.87  # the last voiced sample of q1.wav
END_OF_TURN_S = 0.5  # the server's VAD min_silence_ms
SKIPPED = "assistant_skipped_ticks_total"


@pytest.fixture(scope="module")
def record_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("records")


@pytest.fixture(scope="module")
def chat_server(record_dir):
    with start_server("--backend", "scripted", "--max-sessions", "8", "--record", str(record_dir)) as address:
        yield address


@pytest.fixture(scope="module")
def ui_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("moshi-ui")
    (root / "index.html").write_text(
        '<!doctype html><script type="module" src="/assets/index-abc.js"></script>'
    )
    (root / "assets").mkdir()
    (root / "assets" / "index-abc.js").write_text("new WebSocket(`ws://${location.host}/api/chat`);")
    return root


@pytest.fixture(scope="module")
def guarded_server(ui_dir):
    with start_server("--backend", "scripted", "--auth-token", TOKEN, "--moshi-ui", str(ui_dir)) as address:
        yield address


def chat_url(address, query: str = "") -> str:
    return f"ws://{address.host}:{address.port}/api/chat" + (f"?{query}" if query else "")


def first_voiced_s(pcm: np.ndarray) -> float:
    blocks = np.flatnonzero(voiced(pcm))
    assert blocks.size, "no voiced audio"
    return blocks[0] * 240 / SAMPLE_RATE_HZ


# -- clients built as Kyutai's ---------------------------------------------------------------------


async def converse(url: str, user: np.ndarray) -> MoshiChatClient:
    async with connect(url) as ws:
        client = MoshiChatClient(ws)
        await client.wait_handshake()
        await client.stream(user)
        await asyncio.sleep(0.2)  # the last frames' answers
    return client


async def test_eight_kyutai_style_clients_at_once_each_hear_the_reply_and_its_cut(chat_server):
    q1, interrupt = read_clip("q1"), read_clip("interrupt")
    gap_s = 1.3  # the reply starts about 0.5 s into it; the user cuts in at its end
    cut_at_s = q1.size / SAMPLE_RATE_HZ + gap_s
    user = np.concatenate([q1, silence(gap_s), interrupt[: round(3.05 * SAMPLE_RATE_HZ)]])
    skipped_before = metric(chat_server, SKIPPED)
    sessions = [asyncio.create_task(converse(chat_url(chat_server), user)) for _ in range(8)]
    await asyncio.sleep(1.0)
    # Eight is this server's --max-sessions: a ninth is told to come back later, the eight go on.
    async with connect(chat_url(chat_server)) as ws:
        with pytest.raises(ConnectionClosed) as refused:
            await asyncio.wait_for(ws.recv(), 5)
    assert refused.value.rcvd.code == 1013 and "server full" in refused.value.rcvd.reason
    clients = await asyncio.gather(*sessions)
    skipped_s = (metric(chat_server, SKIPPED) - skipped_before) * FRAME_SAMPLES / SAMPLE_RATE_HZ
    for client in clients:
        assert client.errors == [] and client.other == []
        assert client.audio[0][0] >= client.handshake_at  # the handshake came first
        # Audio came all along, a frame for every tick the server ran (80 ms, silence included; the
        # ticks a busy CPU made it skip have none), so the stream never starves.
        assert client.received().size / SAMPLE_RATE_HZ >= user.size / SAMPLE_RATE_HZ - 0.3 - skipped_s
        # Where the reply and its cut are in what the listener plays (frame k answers the user's frame
        # k; a skipped tick takes a frame out, so what follows it comes that much earlier).
        voiced_at = client.voiced_in_stream()
        reply_at = Q1_SPEECH_END_S + END_OF_TURN_S
        assert reply_at - 0.1 - skipped_s < voiced_at[0] < reply_at + 0.6
        # Cut: nothing voiced once the user has been talking for a moment (uncut, the 4.5 s
        # reply would run to the end of this stream).
        assert voiced_at[-1] < cut_at_s + 0.6
        assert voiced_at[-1] - voiced_at[0] > 0.6 - skipped_s  # but it did speak first
        text = client.text()
        assert text.startswith("Sure,") and REPLY.text.startswith(text) and len(text) < len(REPLY.text)


# -- Kyutai's own client code ----------------------------------------------------------------------


def fake_sound_device(mic: np.ndarray):
    """A `sounddevice` stand-in for `moshi.client`: the "microphone" plays `mic` then silence, the
    "speaker" keeps what it is given, each one block per block-length of wall time on its own thread."""
    played: list[tuple[float, np.ndarray]] = []
    started: list[float] = []

    class Stream:
        def __init__(self, samplerate, channels, blocksize, callback):
            self.rate, self.channels, self.block = int(samplerate), channels, blocksize
            self.callback = callback
            self.stop = threading.Event()
            self.thread = threading.Thread(target=self.run, daemon=True)

        def __enter__(self):
            self.thread.start()
            return self

        def __exit__(self, *exc):
            self.stop.set()
            self.thread.join(2)

        def run(self):
            t0, k = time.monotonic(), 0
            started.append(t0)
            while not self.stop.is_set():
                self.stop.wait(max(0.0, t0 + (k + 1) * self.block / self.rate - time.monotonic()))
                self.tick(k, t0)
                k += 1

    class InputStream(Stream):
        def tick(self, k, t0):
            block = np.zeros((self.block, self.channels), np.float32)
            piece = mic[k * self.block : (k + 1) * self.block]
            block[: piece.size, 0] = piece
            self.callback(block, self.block, None, None)

    class OutputStream(Stream):
        def tick(self, k, t0):
            out = np.empty((self.block, self.channels), np.float32)
            self.callback(out, self.block, None, None)
            played.append((time.monotonic() - started[0], out[:, 0].copy()))

    return types.SimpleNamespace(InputStream=InputStream, OutputStream=OutputStream), played


async def test_kyutais_own_client_runs_headless_against_the_server(chat_server, monkeypatch):
    pytest.importorskip("aiohttp")
    mic = np.concatenate([read_clip("q1"), silence(2.3)])
    fake_sd, played = fake_sound_device(mic)
    monkeypatch.setitem(sys.modules, "sounddevice", fake_sd)  # no PortAudio needed to import it
    kyutai_client = importlib.import_module("moshi.client")
    client_utils = importlib.import_module("moshi.client_utils")
    monkeypatch.setattr(kyutai_client, "sd", fake_sd)
    printer = client_utils.RawPrinter(stream=io.StringIO(), err_stream=io.StringIO())
    args = argparse.Namespace(host=chat_server.host, port=chat_server.port, https=False, url=None)
    # Their client: URL, aiohttp websocket, sphn streams, framing, its playback queue; it streams
    # from the moment it connects, handshake or not.
    run = asyncio.create_task(kyutai_client.run(printer, args))
    await asyncio.sleep(mic.size / SAMPLE_RATE_HZ + 0.3)
    printed, complaints = printer.stream.getvalue(), printer.err_stream.getvalue()
    run.cancel()  # its way out is Ctrl-C
    with contextlib.suppress(asyncio.CancelledError):
        await run
    assert printed.startswith("Sure, happy to help.") and REPLY.text.startswith(printed)
    # It knows no handshake message (it warns about it once, as with Kyutai's own server), and
    # nothing else surprised it.
    assert complaints.count("unknown message kind") == 1 and "unknown message kind 0\n" in complaints
    assert "Lost connection" not in complaints
    heard = [t for t, block in played if voiced(block).any()]
    # Its speaker played the reply once q1 was over (its queue adds no delay of its own).
    assert Q1_SPEECH_END_S + END_OF_TURN_S - 0.1 < heard[0] < Q1_SPEECH_END_S + END_OF_TURN_S + 0.8
    assert heard[-1] - heard[0] > 1.0


# -- Full-Duplex-Bench v1's Moshi inference flow ---------------------------------------------------


def envelope(pcm: np.ndarray, window: int = 240) -> np.ndarray:
    blocks = pcm[: pcm.size // window * window].reshape(-1, window).astype(np.float64)
    return np.sqrt((blocks**2).mean(axis=1))


async def test_fdb_v1_flow_writes_an_output_wav_of_the_input_length_with_the_reply_in_place(
    chat_server, record_dir, tmp_path
):
    user = np.concatenate([read_clip("q1"), silence(2.3)])
    sf.write(tmp_path / "input.wav", user, SAMPLE_RATE_HZ, subtype="PCM_16")
    # FDB's script: read input.wav, stream it in 80 ms Opus frames in real time, keep what comes
    # back, write it after one frame of zeros, cut or pad to the input's length.
    inp, rate = sf.read(tmp_path / "input.wav", dtype="float32")
    client = await converse(chat_url(chat_server, "text_temperature=0.6"), inp)
    out = np.concatenate([np.zeros(FRAME_SAMPLES, np.float32), client.received()])[: inp.size]
    out = np.pad(out, (0, inp.size - out.size))
    sf.write(tmp_path / "output.wav", out, rate, subtype="PCM_16")
    written, written_rate = sf.read(tmp_path / "output.wav", dtype="float32")
    assert written_rate == SAMPLE_RATE_HZ and written.size == inp.size
    # The reply is where the offline path (`assistant respond`: output frame i answers input frame
    # i, no network, no clock) puts it, a few frames later: each 80 ms chunk is sent when it is
    # complete, just after a tick (the client paces itself from the handshake), and waits for the
    # next one. Silence before it.
    offline = run_offline(ScriptedEngine(1), inp).assistant
    onset, expected = first_voiced_s(written), first_voiced_s(offline)
    assert Q1_SPEECH_END_S + END_OF_TURN_S < expected < onset < expected + 0.35
    # ... and it is the reply (through Opus): its loudness contour matches reply.wav's
    reply, _ = sf.read(DEFAULT_REPLY, dtype="float32")
    start = round(onset * SAMPLE_RATE_HZ)
    ours = envelope(written[start:])
    theirs = envelope(reply[round(first_voiced_s(reply) * SAMPLE_RATE_HZ) :])
    n = min(ours.size, theirs.size)
    assert np.corrcoef(ours[:n], theirs[:n])[0, 1] > 0.9

    # The session is recorded and counted like any other endpoint's.
    async def recorded() -> list[dict]:
        for _ in range(100):
            for path in record_dir.glob("*.jsonl"):
                lines = [json.loads(line) for line in path.read_text().splitlines()]
                if (
                    lines
                    and lines[0]["options"]["text_temperature"] == 0.6
                    and lines[-1]["event"] == "session.ended"
                ):
                    return lines
            await asyncio.sleep(0.05)
        raise AssertionError(f"no finished recording in {record_dir}")

    events = await recorded()
    assert any(e["event"] == "assistant.speech_started" for e in events)
    assert any(e["event"] == "input.speech_stopped" for e in events)
    status, _, metrics = http_get(chat_server, "/metrics")
    assert status == 200 and b"assistant_sessions_total" in metrics


# -- bad input, bad set-ups -------------------------------------------------------------------------


async def test_bad_messages_are_skipped_a_broken_stream_closes_1007_and_the_server_goes_on(chat_server):
    async with connect(chat_url(chat_server)) as ws:
        client = MoshiChatClient(ws)
        await client.wait_handshake()
        # As the originals: a text frame, an unknown kind, an empty message are logged and skipped.
        await ws.send("hello")
        await ws.send(b"\x07whatever")
        await ws.send(b"")
        await client.stream(silence(0.4))
        audio_before = len(client.audio)
        await asyncio.sleep(0.3)
        assert len(client.audio) > audio_before and client.closed is None  # the session goes on
        # A stream that stops being Ogg cannot be decoded any further (sphn cannot resync): closed.
        await ws.send(b"\x01" + b"this is not an Ogg page, " * 4)
        closed = await client.wait_closed()
    assert closed.rcvd.code == 1007 and "broken Ogg Opus stream" in closed.rcvd.reason
    assert client.errors and client.errors[0].startswith("broken Ogg Opus stream")
    said = ("skips a text message", "kind 0x07", "broken Ogg Opus stream")
    for _ in range(200):  # the server's log reaches this process a line at a time
        if all(line in "\n".join(chat_server.output) for line in said):
            break
        await asyncio.sleep(0.05)
    logged = "\n".join(chat_server.output)
    assert all(line in logged for line in said), logged[-2000:]
    # The server survives: a new conversation starts as before.
    async with connect(chat_url(chat_server)) as ws:
        await MoshiChatClient(ws).wait_handshake()
    status, _, body = http_get(chat_server, "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"


@pytest.mark.parametrize(
    ("query", "says"),
    [
        ("text_prompt=You%20are%20a%20pirate.", "takes no role or voice prompt"),
        ("voice_prompt=NATF2.pt", "takes no role or voice prompt"),
        ("seed=abc", "seed must be an integer"),
        ("audio_temperature=9", "audio_temperature must be between 0 and 5"),
    ],
)
async def test_set_ups_the_engine_cannot_honour_are_refused_with_the_reason(chat_server, query, says):
    async with connect(chat_url(chat_server, query)) as ws:
        client = MoshiChatClient(ws)
        closed = await client.wait_closed()
    assert client.handshake_at is None and client.audio == []
    assert closed.rcvd.code == 1008 and says in closed.rcvd.reason
    assert len(client.errors) == 1 and says in client.errors[0]


async def test_the_web_clients_other_parameters_are_ignored_as_the_originals_do(chat_server):
    query = (
        "text_temperature=0.7&text_topk=25&audio_temperature=0.8&audio_topk=250&pad_mult=0"
        "&text_seed=1&audio_seed=2&repetition_penalty_context=64&repetition_penalty=1&text_prompt="
    )
    async with connect(chat_url(chat_server, query)) as ws:
        await MoshiChatClient(ws).wait_handshake()


# -- auth, Origin, the web UI -----------------------------------------------------------------------


async def test_token_and_origin_rules_apply_to_api_chat(guarded_server):
    for url, headers, status in [
        (chat_url(guarded_server), {}, 401),
        (chat_url(guarded_server, "token=wrong"), {}, 401),
        (chat_url(guarded_server, f"token={TOKEN}"), {"Origin": "http://elsewhere.example"}, 403),
    ]:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(url, additional_headers=headers):
                pass
        assert refused.value.response.status_code == status
    own = f"http://{guarded_server.host}:{guarded_server.port}"
    # Browsers cannot set headers: the web clients' page is served here, so its origin is ours.
    async with connect(chat_url(guarded_server, f"token={TOKEN}"), additional_headers={"Origin": own}) as ws:
        await MoshiChatClient(ws).wait_handshake()


def test_moshi_ui_is_served_at_the_root_in_place_of_the_built_in_page(guarded_server, ui_dir):
    status, headers, body = http_get(guarded_server, "/")
    assert status == 200 and body == (ui_dir / "index.html").read_bytes()
    status, headers, body = http_get(guarded_server, "/assets/index-abc.js")
    assert status == 200 and headers["content-type"].startswith("text/javascript") and b"/api/chat" in body
    assert http_get(guarded_server, "/app.js")[0] == 404  # the built-in page's own files are not
    assert http_get(guarded_server, "/healthz")[0] == 200


def test_moshi_ui_must_be_a_static_build(tmp_path):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    with pytest.raises(ValueError, match="has no index.html"):
        config_from_args(parser.parse_args(["--backend", "scripted", "--moshi-ui", str(tmp_path)]))
    (tmp_path / "index.html").write_text("<!doctype html>")
    config = config_from_args(parser.parse_args(["--backend", "scripted", "--moshi-ui", str(tmp_path)]))
    assert config.web_root == tmp_path
