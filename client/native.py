"""An asyncio client for the native conversation protocol (`/ws`, see docs/protocol.md).

The wire format is handled by pure functions (`start_message`, `event_message`, `decode_message`,
`describe_connect_error`), testable without sockets; `NativeClient` is the thin websocket shell:

    client = await NativeClient.connect("ws://127.0.0.1:8998/ws", sample_rate=48000, barge_in="vad")
    await client.send_audio(pcm)                 # float32 or int16 (n,), any length
    await client.show_image(image_for_wire(data))   # a vision model sees it (None: no image)
    async for item in client.receive():          # np.ndarray int16 audio or ServerEvent, in order
        ...
    await client.end()                           # session.end, wait for session.ended, close

`audio_format="opus"` puts 20 ms Opus packets (24 kHz) on the wire both ways instead of PCM16
(about 24 kbit/s instead of 384); the client resamples, encodes and decodes, so callers still send
and receive PCM at `sample_rate`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from assistant.conversation.options import BARGE_IN_POLICIES
from audio.frames import SAMPLE_RATE_HZ
from audio.opus_packets import OpusPacketDecoder, OpusPacketEncoder, OpusPacketError
from audio.pcm import float32_to_pcm16
from audio.resample import SUPPORTED_RATES, StreamResampler
from server.protocols.limits import MAX_MESSAGE_BYTES
from server.protocols.native.client_events import AUDIO_FORMATS, OPTION_FIELDS

# The client speaks the server's own protocol definitions, so the two cannot drift apart.
SESSION_OPTIONS = tuple(sorted(OPTION_FIELDS))
IMAGE_SIDE = 448  # the model sees every image squashed to this square
# The largest image file one session.image message carries (base64: 4 bytes per 3, and the event).
MAX_WIRE_IMAGE_BYTES = (MAX_MESSAGE_BYTES - 1024) // 4 * 3


class ClientError(Exception):
    """A failure the user can act on; the message says what went wrong and what to do."""


@dataclass(frozen=True)
class ServerEvent:
    """One JSON event from the server: `type` plus its other fields in `data`."""

    type: str
    data: dict[str, Any] = field(default_factory=dict)

    def get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)


# -- pure wire format ------------------------------------------------------------------------
def check_options(options: dict[str, Any]) -> dict[str, Any]:
    """Validate session options before they go on the wire; drop the ones left as None."""
    unknown = sorted(set(options) - set(SESSION_OPTIONS))
    if unknown:
        raise ValueError(f"unknown session option(s) {unknown}; known: {', '.join(SESSION_OPTIONS)}")
    clean = {k: v for k, v in options.items() if v is not None}
    if "barge_in" in clean and clean["barge_in"] not in BARGE_IN_POLICIES:
        raise ValueError(f"barge_in must be one of {BARGE_IN_POLICIES}, got {clean['barge_in']!r}")
    return clean


def start_message(sample_rate: int, *, audio_format: str = "pcm16", **options: Any) -> str:
    """The `session.start` event declaring the rate and the format of the audio both ways."""
    if sample_rate not in SUPPORTED_RATES:
        raise ValueError(
            f"sample_rate {sample_rate} Hz is not accepted by the server; use one of {SUPPORTED_RATES}"
        )
    if audio_format not in AUDIO_FORMATS:
        raise ValueError(f"audio_format must be one of {AUDIO_FORMATS}, got {audio_format!r}")
    if audio_format == "opus" and sample_rate != SAMPLE_RATE_HZ:
        raise ValueError(f"audio_format opus runs at {SAMPLE_RATE_HZ} Hz, not {sample_rate}")
    fmt = {"audio_format": audio_format} if audio_format != "pcm16" else {}
    return json.dumps(
        {"type": "session.start", "sample_rate": int(sample_rate), **fmt, **check_options(options)}
    )


def event_message(type_: str, **fields: Any) -> str:
    """Any other client event as JSON text (`playback.position`, `session.update`, `session.end`)."""
    return json.dumps({"type": type_, **fields})


def image_message(data: bytes | None) -> str:
    """The `session.image` event showing the model the image file `data` (None: no image)."""
    return event_message("session.image", data=None if data is None else base64.b64encode(data).decode())


def image_for_wire(data: bytes) -> bytes:
    """An image file as `session.image` sends it: as it is when it fits one message (the server
    then resizes it exactly as the model's own server does), else squashed to 448 x 448 as the model
    sees it, as a JPEG. Raises ClientError for a file that is not an image this can read."""
    if len(data) <= MAX_WIRE_IMAGE_BYTES:
        return data
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as picture:
            small = picture.convert("RGB").resize((IMAGE_SIDE, IMAGE_SIDE), Image.Resampling.BICUBIC)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ClientError(f"cannot read the image ({len(data)} bytes): {exc}") from exc
    out = io.BytesIO()
    small.save(out, format="JPEG", quality=90)
    return out.getvalue()


def decode_message(message: str | bytes) -> ServerEvent | np.ndarray:
    """A server message -> ServerEvent (text frames) or int16 (n,) audio samples (binary frames)."""
    if isinstance(message, (bytes, bytearray, memoryview)):
        if len(message) % 2:
            raise ValueError(f"server sent {len(message)} bytes of audio; PCM16 needs an even length")
        return np.frombuffer(bytes(message), dtype="<i2").copy()
    try:
        obj = json.loads(message)
    except json.JSONDecodeError as exc:
        raise ValueError(f"server sent text that is not JSON: {message[:80]!r}") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ValueError(f"server sent JSON without a 'type': {message[:80]!r}")
    data = dict(obj)
    return ServerEvent(type=data.pop("type"), data=data)


def describe_connect_error(url: str, exc: BaseException, token_sent: bool = False) -> str:
    """A message for a failed connection that says what to do about it (token_sent: a token went with it)."""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        if status == 401 and token_sent:
            return (
                f"{url} refused the connection (HTTP 401): the server refused the token; check --token "
                "(or $ASSISTANT_AUTH_TOKEN) against the server's --auth-token"
            )
        if status == 401:
            return f"{url} refused the connection (HTTP 401): the server needs an auth token; pass --token"
        if status == 403:
            return f"{url} refused the connection (HTTP 403): origin not allowed by the server's --allowed-origins"
        if status == 404:
            return f"{url} has no websocket endpoint (HTTP 404); the native protocol lives at /ws"
        return f"{url} refused the websocket handshake with HTTP {status}"
    if isinstance(exc, InvalidURI):
        return f"{url!r} is not a websocket URL; expected e.g. ws://127.0.0.1:8998/ws"
    if isinstance(exc, ConnectionClosed):
        code = exc.rcvd.code if exc.rcvd is not None else None
        reason = exc.rcvd.reason if exc.rcvd is not None else ""
        if code == 1013:
            return f"{url} is full ({reason or 'no free slot'}); try again later"
        return f"{url} closed the connection (code {code}{': ' + reason if reason else ''})"
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return f"cannot reach {url} ({exc or type(exc).__name__}); is `assistant serve` running there?"
    return f"connecting to {url} failed: {exc}"


# -- the websocket shell ---------------------------------------------------------------------
class NativeClient:
    """One live session on a server's `/ws` endpoint."""

    def __init__(
        self,
        ws: ClientConnection,
        ready: ServerEvent,
        url: str,
        sample_rate: int,
        audio_format: str = "pcm16",
    ):
        self._ws = ws
        self.ready = ready
        self.url = url
        self.session_id: str | None = ready.get("session_id")
        self.sample_rate = sample_rate  # of the audio both ways
        self.audio_format = audio_format
        opus = audio_format == "opus"
        self._encoder = OpusPacketEncoder() if opus else None
        self._decoder = OpusPacketDecoder() if opus else None
        resample = opus and sample_rate != SAMPLE_RATE_HZ
        self._to_wire = StreamResampler(sample_rate, SAMPLE_RATE_HZ) if resample else None
        self._from_wire = StreamResampler(SAMPLE_RATE_HZ, sample_rate) if resample else None
        self.ended: ServerEvent | None = None
        self._reading = False
        self._ended_event = asyncio.Event()

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        sample_rate: int,
        token: str | None = None,
        open_timeout: float = 10.0,
        audio_format: str = "pcm16",
        **options: Any,
    ) -> NativeClient:
        """Open the websocket, send session.start and wait for session.ready. Raises ClientError."""
        # Opus is 24 kHz on the wire whatever the caller's rate; this client resamples around it.
        wire_rate = SAMPLE_RATE_HZ if audio_format == "opus" else sample_rate
        message = start_message(
            wire_rate, audio_format=audio_format, **options
        )  # bad options fail before any network use
        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            ws = await websockets.connect(
                url,
                additional_headers=headers,
                open_timeout=open_timeout,
                max_size=MAX_MESSAGE_BYTES,
                compression=None,  # PCM barely compresses; deflate would only add CPU and latency
            )
        except (OSError, asyncio.TimeoutError, InvalidStatus, InvalidURI, websockets.InvalidHandshake) as exc:
            raise ClientError(describe_connect_error(url, exc, token_sent=bool(token))) from exc
        try:
            await ws.send(message)
            ready = await asyncio.wait_for(cls._first_event(ws), timeout=open_timeout)
        except ConnectionClosed as exc:
            raise ClientError(describe_connect_error(url, exc)) from exc
        except asyncio.TimeoutError as exc:
            await ws.close()
            raise ClientError(f"{url} did not answer session.start within {open_timeout:.0f} s") from exc
        except ValueError as exc:
            await ws.close()
            raise ClientError(f"{url} does not speak the native protocol: {exc}") from exc
        except BaseException:
            await ws.close()
            raise
        if ready.type == "error":
            await ws.close()
            raise ClientError(f"{url} refused the session: {ready.get('code')}: {ready.get('message')}")
        if ready.type != "session.ready":
            await ws.close()
            raise ClientError(f"{url} answered session.start with {ready.type!r}, expected session.ready")
        if ready.get("sample_rate", wire_rate) != wire_rate:
            await ws.close()
            raise ClientError(
                f"{url} answered with sample_rate {ready.get('sample_rate')}, asked for {wire_rate}"
            )
        if ready.get("audio_format", "pcm16") != audio_format:
            await ws.close()
            raise ClientError(
                f"{url} does not take audio_format {audio_format!r} (it answered "
                f"{ready.get('audio_format', 'pcm16')!r}); upgrade the server or use pcm16"
            )
        return cls(ws, ready, url, sample_rate, audio_format)

    @staticmethod
    async def _first_event(ws: ClientConnection) -> ServerEvent:
        # Audio cannot precede session.ready on a conforming server; skip it rather than fail.
        while True:
            item = decode_message(await ws.recv())
            if isinstance(item, ServerEvent):
                return item

    async def send_audio(self, pcm: np.ndarray) -> None:
        """Send microphone samples: float (n,) in [-1, 1] or int16 (n,), at the session's rate."""
        pcm = np.asarray(pcm)
        if self._encoder is not None:
            x = pcm.astype(np.float32) / 32768.0 if pcm.dtype == np.int16 else pcm
            x = x if self._to_wire is None else self._to_wire.process(x)
            for packet in self._encoder.encode(x):
                await self._ws.send(packet)
            return
        data = pcm.astype("<i2").tobytes() if pcm.dtype == np.int16 else float32_to_pcm16(pcm)
        if data:
            await self._ws.send(data)

    async def send_position(self, played_ms: float) -> None:
        await self._ws.send(event_message("playback.position", played_ms=round(float(played_ms), 1)))

    async def update(self, **options: Any) -> None:
        await self._ws.send(event_message("session.update", **check_options(options)))

    async def show_image(self, data: bytes | None) -> None:
        """Show the model an image file's bytes (see `image_for_wire`), or none; the server answers
        `session.image.updated` once the model sees it, or an `error`."""
        await self._ws.send(image_message(data))

    async def receive(self) -> AsyncIterator[ServerEvent | np.ndarray]:
        """Yield server audio (int16 (n,)) and events in arrival order until the socket closes."""
        self._reading = True
        try:
            async for message in self._ws:
                try:
                    item = self._decode(message)
                except ValueError as exc:
                    raise ClientError(f"{self.url} does not speak the native protocol: {exc}") from exc
                if isinstance(item, ServerEvent) and item.type == "session.ended":
                    self.ended = item
                    self._ended_event.set()
                yield item
        except ConnectionClosed:
            return  # an abnormal close ends the stream the same way; `close_code` says why
        finally:
            self._reading = False
            self._ended_event.set()

    def _decode(self, message: str | bytes) -> ServerEvent | np.ndarray:
        if self._decoder is None or isinstance(message, str):
            return decode_message(message)
        try:
            pcm = self._decoder.decode(message)
        except OpusPacketError as exc:
            raise ValueError(f"server sent a bad Opus packet: {exc}") from None
        pcm = pcm if self._from_wire is None else self._from_wire.process(pcm)
        return np.frombuffer(float32_to_pcm16(pcm), dtype="<i2").copy()

    @property
    def close_code(self) -> int | None:
        return self._ws.close_code

    async def end(self, timeout: float = 2.0) -> None:
        """Send session.end, wait (bounded) for session.ended, then close the socket."""
        try:
            await self._ws.send(event_message("session.end"))
            if self._reading:
                await asyncio.wait_for(self._ended_event.wait(), timeout)
            else:
                await asyncio.wait_for(self._drain_until_ended(), timeout)
        except (ConnectionClosed, asyncio.TimeoutError):
            pass  # the server is gone or slow; closing below is all that is left to do
        finally:
            await self._ws.close()

    async def _drain_until_ended(self) -> None:
        async for item in self.receive():
            if isinstance(item, ServerEvent) and item.type == "session.ended":
                return

    async def close(self) -> None:
        await self._ws.close()
