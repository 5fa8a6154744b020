"""What `assistant talk` shows: the conversation in the order it was spoken, interrupted replies
marked as cut, a header printed once and whole, and a refused token named as such.

The view (client/view.py) is fed scripted events; the terminal itself is checked in tmux, with
`assistant talk` on a pseudo-terminal of 100 x 30 against a scripted server with captions on.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from rich.console import Console

from client.native import ServerEvent
from client.view import CAPTION_WAIT_S, LiveDisplay, TalkView

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "tests" / "data" / "speech"
# How long the session goes on after the last words, so their captions (tiny.en on a CPU that
# other work keeps busy: up to ten seconds or so) arrive before it ends.
CAPTION_TIME_S = 15


def ev(type_: str, **data) -> ServerEvent:
    return ServerEvent(type_, data)


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def captioned_view(clock: Clock) -> TalkView:
    view = TalkView(clock=clock)
    view.on_event(ev("session.ready", session_id="s", options={"captions": True}))
    return view


def reply(view: TalkView, words: list[str], input_ms: float, at_ms: float) -> None:
    """The assistant says `words` from `at_ms` on the output timeline, every word played out."""
    view.on_event(ev("assistant.speech_started", at_ms=at_ms, input_ms=input_ms))
    for i, word in enumerate(words):
        view.on_event(ev("assistant.text", text=word, at_ms=at_ms + 80 * i))
    view.on_played(at_ms + 80 * len(words))
    view.on_event(ev("assistant.speech_stopped", at_ms=at_ms + 80 * len(words)))
    view.on_played(at_ms + 80 * len(words))


def test_the_users_caption_comes_before_the_reply_to_it_though_it_arrives_after():
    clock = Clock()
    view = captioned_view(clock)
    view.on_event(ev("input.speech_started", at_ms=0))
    view.on_event(ev("input.speech_stopped", at_ms=3960))
    reply(view, ["Sure,", " happy", " to", " help."], input_ms=4520, at_ms=4480)
    assert view.take_lines() == ["-- assistant speaking"], "the reply waits for the caption before it"
    clock.now += 1.5  # the caption is ready a second and a half later
    view.on_event(ev("user.transcript", text="Tell me a story.", start_ms=0, end_ms=3960))
    assert view.take_lines() == ["user: Tell me a story.", "assistant: Sure, happy to help."]
    assert [t.role for t in view.turns] == ["user", "assistant"], "the panel's order too"


def test_a_caption_that_never_comes_holds_the_reply_only_a_few_seconds():
    clock = Clock()
    view = captioned_view(clock)
    view.on_event(ev("input.speech_stopped", at_ms=2000))
    reply(view, ["Yes."], input_ms=2600, at_ms=2600)
    view.on_event(ev("stats", response_gap_ms=600.0))
    assert view.take_lines() == ["-- assistant speaking"], "later lines keep their order behind the reply"
    clock.now += CAPTION_WAIT_S + 0.1
    view.on_played(10_000)
    assert view.take_lines() == ["assistant: Yes.", "-- latency: response gap 600 ms, buffer 0 ms"]


def test_a_reply_before_the_user_spoke_waits_for_nothing():
    view = captioned_view(Clock())
    reply(view, ["Hello."], input_ms=0, at_ms=0)
    view.on_event(ev("input.speech_stopped", at_ms=3000))  # the user answers the greeting
    assert view.take_lines() == ["-- assistant speaking", "assistant: Hello."]


def test_an_interrupted_reply_is_marked_cut_even_when_all_that_was_sent_had_been_heard():
    view = TalkView()
    view.on_event(ev("assistant.speech_started", at_ms=0, input_ms=0))
    for i, word in enumerate(["Once", " upon", " a", " time"]):
        view.on_event(ev("assistant.text", text=word, at_ms=80 * i))
    view.on_played(400)
    view.on_event(ev("playback.clear", reason="barge_in"))
    view.on_event(ev("barge_in", at_ms=420, cut_text=""))  # nothing unheard: the model just stopped
    assert view.take_lines() == [
        "-- assistant speaking",
        "assistant: Once upon a time [cut]",
        "-- interrupted",
    ]
    assert view.turns[-1].interrupted


def test_a_reply_already_printed_is_marked_cut_when_the_interruption_comes_after_it():
    view = TalkView()
    reply(view, ["All", " done."], input_ms=0, at_ms=0)
    view.on_event(ev("barge_in", at_ms=300, cut_text=""))
    assert view.take_lines()[-2:] == ["assistant: All done. [cut]", "-- interrupted"]


def render(view: TalkView, width: int = 60) -> tuple[str, list]:
    console = Console(file=io.StringIO(), width=width, force_terminal=True, color_system="standard")
    panel = LiveDisplay.render(LiveDisplay.__new__(LiveDisplay), view)  # render only: no live terminal
    segments = list(console.render(panel))
    return "".join(s.text for s in segments), segments


def test_the_panel_strikes_through_what_was_never_heard_and_keeps_its_title_short():
    view = TalkView()
    view.on_event(ev("assistant.speech_started", at_ms=0, input_ms=0))
    for i, word in enumerate(["Once", " upon", " a", " time"]):
        view.on_event(ev("assistant.text", text=word, at_ms=80 * i))
    view.on_played(90)
    view.on_event(ev("barge_in", at_ms=100, cut_text="upon a time"))
    text, segments = render(view)
    assert "assistant: Once [cut: upon a time]" in text
    struck = [s.text for s in segments if s.style is not None and s.style.strike]
    assert struck == ["upon a time"], "what was never heard is struck through, as on the page"
    assert text.splitlines()[0].count("assistant talk") == 1, "a short title, never the URL or a path"


def test_the_panel_says_when_the_session_has_ended():
    view = TalkView()
    view.on_event(ev("assistant.speech_started", at_ms=0, input_ms=0))
    view.on_event(ev("session.ended", reason="client_ended"))
    text, _ = render(view)
    assert "ENDED" in text and "SPEAKING" not in text


# -- the CLI against a server --------------------------------------------------------------------
def talk_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "assistant", "talk", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("ASSISTANT_AUTH_TOKEN", None)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_a_wrong_token_is_refused_as_such_and_a_missing_one_is_asked_for(tmp_path):
    from server_utils import start_server

    files = ["--input-file", str(SPEECH / "q1.wav"), "--output-file", str(tmp_path / "out.wav")]
    with start_server("--auth-token", "right-token") as server:
        wrong = talk_cli("--server", server.ws_url, "--token", "wrong-token", *files)
        missing = talk_cli("--server", server.ws_url, *files)
    assert wrong.returncode == 1 and missing.returncode == 1
    assert "the server refused the token" in wrong.stderr, wrong.stderr
    assert "wrong-token" not in wrong.stderr, "the token itself is never printed"
    assert "needs an auth token; pass --token" in missing.stderr, missing.stderr
    assert "refused the token" not in missing.stderr


# -- the terminal, in tmux -----------------------------------------------------------------------
@pytest.mark.timeout(150)
@pytest.mark.skipif(shutil.which("tmux") is None, reason="the terminal view is checked in tmux")
def test_the_terminal_view_in_tmux(tmp_path):
    """A 100 x 30 terminal: the header once and whole, the user's captions before the replies to
    them, the interrupted reply marked cut, the end of the session said under the panel."""
    from server_utils import start_server

    socket = str(tmp_path / "tmux.sock")
    out = tmp_path / "a-folder-with-a-long-name-for-the-recordings" / "conversation-heard.wav"
    out.parent.mkdir()
    with start_server("--captions", "auto", startup_timeout_s=60) as server:
        cmd = (
            f"{sys.executable} -m assistant talk --server {server.ws_url} --input-file "
            f"{SPEECH / 'conversation.wav'} --output-file {out} --tail-seconds {CAPTION_TIME_S}; echo TALK-EXIT=$?; sleep 60"
        )
        tmux = ["tmux", "-S", socket]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run(
            [*tmux, "new-session", "-d", "-x", "100", "-y", "30", "-c", str(REPO), cmd], env=env, check=True
        )
        try:
            deadline = time.monotonic() + 60 + CAPTION_TIME_S
            screen = ""
            while "TALK-EXIT=" not in screen and time.monotonic() < deadline:
                time.sleep(0.5)
                screen = subprocess.run(
                    [*tmux, "capture-pane", "-p", "-J"], capture_output=True, text=True
                ).stdout
        finally:
            subprocess.run([*tmux, "kill-server"], capture_output=True)
    print("\n" + screen)
    assert "TALK-EXIT=0" in screen
    lines = [line for line in screen.splitlines() if line.strip()]
    header = [line for line in lines if "session sess_" in line]
    assert len(header) == 1, "the header is printed once"
    assert str(out) in screen.replace("\n", ""), "the header names the output file whole"
    assert str(out) not in "".join(line for line in lines if line.startswith("╭")), "not in the panel's title"
    turns = [line.strip("│ ").split(": ", 1) for line in lines if line.startswith("│") and ": " in line]
    roles = [who.strip() for who, _ in turns if who.strip() in ("user", "assistant")]
    assert roles[:2] == ["user", "assistant"], f"the question's caption comes before the reply: {turns}"
    assert "lighthouse" in turns[0][1].lower()
    cut = [text for who, text in turns if who.strip() == "assistant" and "[cut" in text]
    assert cut, f"the interrupted reply is marked cut: {turns}"
    assert "ENDED" in screen and "-- session ended (client_ended)" in screen
