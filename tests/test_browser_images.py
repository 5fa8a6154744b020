"""The page shows the assistant images, in Chromium, against the tiny random MoshiVis of tests/data.

Chromium's fake camera (`--use-fake-device-for-media-stream`) gives a test pattern. The microphone
plays silence, the server is greedy (`--temperature 0`) and records every session, so two
conversations hear the same thing and say the same thing, frame for frame, until an image makes
them differ: the test compares what the server recorded of a conversation without an image and one
with the camera snapshot the page took, sent and showed as a thumbnail. Screenshots of the page at
desktop size and at 390 x 844 go to $SIGHT_SHOTS (when set) for a person to look at.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from browser_utils import CHROMIUM, chromium_args, chromium_missing_reason
from image_utils import IMAGE_B, vision_server_running
from listening_utils import recorded_session
from server_utils import start_server

_missing = chromium_missing_reason()
pytestmark = [
    pytest.mark.browser,
    pytest.mark.timeout(400),
    pytest.mark.skipif(_missing is not None, reason=f"browser tests need Chromium: {_missing}"),
]
FRAME = 1920
CONVERSATION_S = 3.5
# Drops (on the captions, away from the image box) or pastes a PNG the way a user's drag or Ctrl+V
# does: a DataTransfer holding the file.
HAND_OVER = """([kind, b64]) => {
  const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
  const transfer = new DataTransfer();
  transfer.items.add(new File([bytes], "chart.png", {type: "image/png"}));
  const target = kind === "drop" ? document.querySelector(".transcript") : document;
  const event = kind === "drop"
    ? new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true})
    : new ClipboardEvent("paste", {clipboardData: transfer, bubbles: true, cancelable: true});
  target.dispatchEvent(event);
}"""


def shots_dir(tmp_path: Path) -> Path:
    shots = Path(os.environ.get("SIGHT_SHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    return shots


@pytest.fixture(scope="module")
def silent_mic(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mic") / "silence-44k.wav"
    sf.write(path, np.zeros(44_100 * 60, dtype=np.int16), 44_100, subtype="PCM_16")
    return path


@pytest.fixture(scope="module")
def vision_server(tmp_path_factory):
    record = tmp_path_factory.mktemp("record")
    with vision_server_running("--temperature", "0", "--record", str(record), max_sessions=1) as address:
        address.record_dir = record
        yield address


@pytest.fixture
def page(silent_mic):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=str(CHROMIUM), args=chromium_args(silent_mic), headless=True
        )
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.errors = []
            page.on("pageerror", lambda e: page.errors.append(str(e)))
            page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
            yield page
        finally:
            browser.close()


def converse(page, seconds: float = CONVERSATION_S) -> str:
    """Start a conversation, let it run, stop it; its session id."""
    page.get_by_test_id("start-button").click()
    page.wait_for_function(
        "assistantClient.state === 'listening' || assistantClient.state === 'speaking'", timeout=30_000
    )
    session = page.evaluate("assistantClient.sessionId")
    page.wait_for_timeout(seconds * 1000)
    return session


def stop(page) -> None:
    page.get_by_test_id("start-button").click()
    page.wait_for_function("assistantClient.state === 'idle'", timeout=10_000)


def frames_of(pcm: np.ndarray) -> list[bytes]:
    pcm16 = np.round(pcm * 32768).astype(np.int32)
    return [pcm16[i : i + FRAME].tobytes() for i in range(0, len(pcm16) - FRAME + 1, FRAME)]


def test_a_camera_snapshot_is_shown_to_the_model_and_changes_what_it_says(vision_server, page, tmp_path):
    shots = shots_dir(tmp_path)
    page.goto(vision_server.http_url + "/")
    panel = page.get_by_test_id("image-panel")
    panel.wait_for(state="visible", timeout=10_000)
    thumb, status = page.get_by_test_id("image-thumb"), page.get_by_test_id("image-status")
    assert thumb.is_hidden()
    page.set_viewport_size({"width": 390, "height": 844})
    page.screenshot(path=str(shots / "phone-no-image.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})

    plain = converse(page)
    stop(page)

    # A snapshot before the conversation: held, then sent when it starts.
    page.get_by_test_id("image-camera").click()
    thumb.wait_for(state="visible", timeout=10_000)
    assert status.inner_text() == "Shown when the conversation starts."
    sent = page.evaluate("document.querySelector('[data-testid=image-thumb]').src")
    assert sent.startswith("data:image/jpeg;base64,")
    assert "a camera photo" in thumb.get_attribute("alt")
    shown = converse(page, 0.1)
    page.wait_for_function(
        "document.querySelector('[data-testid=image-status]').textContent === 'The assistant sees this.'",
        timeout=10_000,
    )
    page.wait_for_timeout(CONVERSATION_S * 1000)
    page.screenshot(path=str(shots / "desktop-camera.png"), full_page=True)
    stop(page)
    assert page.errors == []

    heard_plain, said_plain, _ = recorded_session(vision_server.record_dir, plain)
    heard_shown, said_shown, _ = recorded_session(vision_server.record_dir, shown)
    n = min(len(said_plain), len(said_shown)) // FRAME
    assert n >= 30
    assert not heard_plain[: n * FRAME].any() and not heard_shown[: n * FRAME].any()  # both heard silence
    a, b = frames_of(said_plain[: n * FRAME]), frames_of(said_shown[: n * FRAME])
    differ = [i for i in range(n) if a[i] != b[i]]
    assert differ and differ[0] == 16, differ[:5]  # the snapshot counts from 1.28 s in, as Kyutai's client
    assert len(differ) >= (n - 16) // 2

    # The sent image is the camera's picture, 448 x 448 as the model sees it.
    from PIL import Image

    image = Image.open(__import__("io").BytesIO(base64.b64decode(sent.split(",", 1)[1])))
    assert image.size == (448, 448)
    assert np.asarray(image).std() > 10  # a test pattern, not a blank frame


def test_screen_drop_paste_and_remove_while_talking_and_a_phone_sized_page(vision_server, page, tmp_path):
    shots = shots_dir(tmp_path)
    page.goto(vision_server.http_url + "/")
    page.get_by_test_id("image-panel").wait_for(state="visible", timeout=10_000)
    status = page.get_by_test_id("image-status")
    seen = "document.querySelector('[data-testid=image-status]').textContent === 'The assistant sees this.'"
    converse(page, 0.5)

    page.get_by_test_id("image-screen").click()
    page.wait_for_function(seen, timeout=15_000)
    assert "a screenshot" in page.get_by_test_id("image-thumb").get_attribute("alt")

    png = base64.b64encode(IMAGE_B).decode()
    for kind in ("drop", "paste"):
        page.evaluate("document.querySelector('[data-testid=image-status]').textContent = ''")
        page.evaluate(HAND_OVER, [kind, png])
        page.wait_for_function(seen, timeout=15_000)
        thumb = page.get_by_test_id("image-thumb")
        assert thumb.get_attribute("src") == "data:image/png;base64," + png  # small enough: sent as it is
        assert f"a {'dropped' if kind == 'drop' else 'pasted'} image (180 × 260)" in thumb.get_attribute(
            "alt"
        )

    page.set_viewport_size({"width": 390, "height": 844})
    page.get_by_test_id("image-panel").scroll_into_view_if_needed()
    page.screenshot(path=str(shots / "phone-pasted.png"), full_page=True)
    page.set_viewport_size({"width": 1280, "height": 900})
    page.screenshot(path=str(shots / "desktop-pasted.png"), full_page=True)

    page.get_by_test_id("image-remove").click()
    page.wait_for_function(
        "document.querySelector('[data-testid=image-status]').textContent === ''", timeout=10_000
    )
    assert page.get_by_test_id("image-thumb").is_hidden() and status.inner_text() == ""
    assert page.evaluate("document.activeElement.dataset.testid") == "image-camera"
    stop(page)
    assert page.errors == []


def test_the_image_controls_stay_hidden_when_the_model_takes_no_images(page):
    with start_server("--backend", "scripted") as address:
        page.goto(address.http_url + "/")
        page.wait_for_function(
            "document.querySelector('[data-testid=server-info]').hidden === false", timeout=10_000
        )
        panel = page.get_by_test_id("image-panel")
        assert panel.count() == 1 and panel.is_hidden()
