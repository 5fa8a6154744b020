"""Images on the OpenAI Realtime API: `conversation.item.create` with an `input_image` part (a data URL,
as OpenAI documents it), and `conversation.item.delete` of that item to remove it.

The state machine is checked as pure code (every server event against the `openai` SDK's models);
then the SDK itself sends an image item mid-call to a server running the tiny random MoshiVis of
tests/data, greedy, hearing silence: what it says is the same as without the image until the item is
added, and changes within a few frames after.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import pydantic
import pytest
from image_utils import BAD_IMAGES, IMAGE_A, OVERSIZED_IMAGE, vision_server_running
from openai import AsyncOpenAI
from openai.types.realtime import RealtimeServerEvent
from server_utils import start_server

from assistant.images import UnsupportedImageType
from server.protocols.realtime.records import CheckImage, PushAudio, RemoveImage, SendEvent
from server.protocols.realtime.state_machine import RealtimeConversation

SERVER_EVENT = pydantic.TypeAdapter(RealtimeServerEvent)
FRAME_BYTES = 1920 * 2
PNG_URL = "data:image/png;base64," + base64.b64encode(IMAGE_A).decode()


def conversation() -> RealtimeConversation:
    conv = RealtimeConversation(session_id="sess_t", model="moshivis-test", voice="moshi", id_prefix="t")
    conv.start()
    return conv


def checked(outputs: list) -> list:
    """The state machine's outputs, each server event as its JSON checked against the SDK's models."""
    for out in outputs:
        if isinstance(out, SendEvent):
            SERVER_EVENT.validate_python(out.event)
    return [out.event if isinstance(out, SendEvent) else out for out in outputs]


def create(*parts: dict, **fields) -> str:
    item = {"type": "message", "role": "user", "content": list(parts), **fields.pop("item", {})}
    return json.dumps({"type": "conversation.item.create", "item": item, **fields})


def image_part(url: str = PNG_URL) -> dict:
    return {"type": "input_image", "image_url": url, "detail": "auto"}


def test_an_image_item_is_added_once_its_image_is_accepted():
    conv = conversation()
    [check] = conv.receive(create(image_part(), event_id="e1"))
    assert isinstance(check, CheckImage) and check.image_url == PNG_URL
    added, done = checked(conv.image_accepted(check))
    assert [added["type"], done["type"]] == ["conversation.item.added", "conversation.item.done"]
    assert added["item"]["id"] == check.item_id and added["item"]["content"] == [{"type": "input_image"}]
    assert conv.image_item_id == check.item_id
    assert conv.buffer_start_ms == 0.0  # an image item takes no audio from the input buffer


def test_an_item_of_audio_and_an_image_feeds_the_audio_once_the_image_is_accepted():
    conv = conversation()
    audio = {"type": "input_audio", "audio": base64.b64encode(b"\x01\x00" * 2400).decode()}
    [check] = conv.receive(create(audio, image_part(), item={"id": "mine"}))
    assert check.item_id == "mine"
    # the id is taken while the image is checked
    [error] = checked(conv.receive(create(image_part(), item={"id": "mine"})))
    assert error["error"]["code"] == "invalid_value" and error["error"]["param"] == "item.id"
    push, *events = checked(conv.image_accepted(check))
    assert isinstance(push, PushAudio) and push.paced and len(push.pcm16) == 4800
    item = events[-1]["item"]
    assert [part["type"] for part in item["content"]] == ["input_audio", "input_image"]


def test_a_refused_image_is_an_error_naming_its_code_and_part_and_no_item():
    conv = conversation()
    audio = {"type": "input_audio", "audio": base64.b64encode(b"\x01\x00" * 240).decode()}
    [check] = conv.receive(create(audio, image_part(), event_id="e7"))
    [error] = checked(conv.image_refused(check, UnsupportedImageType("not a JPEG, PNG or WebP image")))
    assert error["error"]["code"] == "unsupported_image_type"
    assert error["error"]["param"] == "item.content[1].image_url" and error["error"]["event_id"] == "e7"
    assert conv.items == {} and conv.pending_image_ids == set()


@pytest.mark.parametrize(
    ("parts", "code", "param"),
    [
        ([image_part("https://example.com/cat.png")], "unsupported_image_type", "item.content[0].image_url"),
        ([image_part("data:text/plain;base64,aGk=")], "unsupported_image_type", "item.content[0].image_url"),
        ([image_part("data:image/png,rawbytes")], "corrupt_image", "item.content[0].image_url"),
        ([image_part(), image_part()], "invalid_value", "item.content"),
        ([{"type": "input_text", "text": "hi"}], "unsupported_feature", "item.content[0].type"),
        ([], "invalid_value", "item.content"),
    ],
)
def test_bad_image_parts_are_refused_when_the_event_is_read(parts, code, param):
    conv = conversation()
    [error] = checked(conv.receive(create(*parts, event_id="e2")))
    assert (error["error"]["code"], error["error"]["param"]) == (code, param), error
    assert error["error"]["event_id"] == "e2"


def test_deleting_the_image_item_removes_the_image_and_no_other_item_can_be_deleted():
    conv = conversation()
    [first] = conv.receive(create(image_part()))
    conv.image_accepted(first)
    [second] = conv.receive(create(image_part()))
    conv.image_accepted(second)
    # the first image was replaced: deleting its item changes nothing the model sees
    [deleted] = checked(
        conv.receive(json.dumps({"type": "conversation.item.delete", "item_id": first.item_id}))
    )
    assert deleted == {**deleted, "type": "conversation.item.deleted", "item_id": first.item_id}
    remove, deleted = checked(
        conv.receive(json.dumps({"type": "conversation.item.delete", "item_id": second.item_id}))
    )
    assert isinstance(remove, RemoveImage) and deleted["item_id"] == second.item_id
    audio = {"type": "input_audio", "audio": base64.b64encode(b"\x01\x00" * 240).decode()}
    audio_item = [e for e in checked(conv.receive(create(audio))) if isinstance(e, dict)][0]["item"]["id"]
    [error] = checked(conv.receive(json.dumps({"type": "conversation.item.delete", "item_id": audio_item})))
    assert error["error"]["code"] == "unsupported_feature"


# -- the SDK against a MoshiVis server --------------------------------------------------------------


@pytest.fixture(scope="module")
def vision_server():
    with vision_server_running("--temperature", "0") as address:
        yield address


async def sdk_session(address, frames: int, show_at: int | None = None, extra: tuple[dict, ...] = ()):
    """A Realtime SDK session hearing silence until `frames` frames of the assistant's audio came;
    an image item is sent once `show_at` frames came. Returns the frames and every event with the
    number of frames received before it."""
    client = AsyncOpenAI(base_url=f"http://{address.host}:{address.port}/v1", api_key="unused")
    audio = b""
    events: list[tuple[int, object]] = []
    async with client.realtime.connect(model="moshivis-tiny") as conn:
        deadline = time.monotonic() + 60
        while len(audio) < frames * FRAME_BYTES:
            event = await asyncio.wait_for(conn.recv(), max(0.1, deadline - time.monotonic()))
            if event.type == "response.output_audio.delta":
                audio += base64.b64decode(event.delta)
            events.append((len(audio) // FRAME_BYTES, event))
            if show_at is not None and len(audio) >= show_at * FRAME_BYTES:
                show_at = None
                for item in ({"type": "message", "role": "user", "content": [image_part()]}, *extra):
                    await conn.conversation.item.create(item=item)
    chunks = [audio[i : i + FRAME_BYTES] for i in range(0, frames * FRAME_BYTES, FRAME_BYTES)]
    return chunks, events


def user_item_added(event) -> bool:
    return event.type == "conversation.item.added" and event.item.role == "user"


async def test_the_sdk_shows_an_image_mid_call_and_the_output_changes_from_the_next_frames(vision_server):
    plain, _ = await sdk_session(vision_server, 48)
    again, _ = await sdk_session(vision_server, 48)
    assert again == plain
    shown, events = await sdk_session(vision_server, 48, show_at=20)
    [(added_at, added)] = [(f, e) for f, e in events if user_item_added(e)]
    assert added.item.content[0].type == "input_image"
    assert not [e for _, e in events if e.type == "error"]
    assert shown[:added_at] == plain[:added_at]
    first = next(i for i, (a, b) in enumerate(zip(shown, plain, strict=True)) if a != b)
    # After the item is added: the next tick hands the image to the engine, the tick after encodes
    # it (this model: one stage), the step after sees it, and its audio is out a frame later; the
    # Realtime adapter may be holding up to 3 quiet frames of the stretch's tail meanwhile.
    assert added_at <= first <= added_at + 3 + 3, (added_at, first)
    assert sum(a != b for a, b in zip(shown[first:], plain[first:], strict=True)) >= (48 - first) // 2


async def test_bad_images_from_the_sdk_get_errors_and_the_session_goes_on(vision_server):
    bad = tuple(
        {
            "type": "message",
            "role": "user",
            "content": [image_part("data:image/png;base64," + base64.b64encode(data).decode())],
        }
        for _, data, _ in BAD_IMAGES
    )
    oversized = {
        "type": "message",
        "role": "user",
        "content": [image_part(PNG_URL[:22] + base64.b64encode(OVERSIZED_IMAGE).decode())],
    }
    frames, events = await sdk_session(vision_server, 30, show_at=4, extra=(*bad, oversized))
    codes = [e.error.code for _, e in events if e.type == "error"]
    assert sorted(codes) == sorted([*(code for _, _, code in BAD_IMAGES), "image_too_large"])
    assert len([e for _, e in events if user_item_added(e)]) == 1  # the good one
    assert len(frames) == 30


async def test_a_model_without_vision_answers_with_an_error_naming_it():
    with start_server("--backend", "scripted") as address:
        client = AsyncOpenAI(base_url=f"http://{address.host}:{address.port}/v1", api_key="unused")
        async with client.realtime.connect(model="any") as conn:
            await conn.conversation.item.create(
                item={"type": "message", "role": "user", "content": [image_part()]}, event_id="img1"
            )
            while (event := await asyncio.wait_for(conn.recv(), 10)).type != "error":
                pass
            assert event.error.code == "images_not_supported" and event.error.event_id == "img1"
            assert "does not take images" in event.error.message
            # and the session goes on
            await conn.input_audio_buffer.append(audio=base64.b64encode(b"\x00\x00" * 4800).decode())
            await conn.input_audio_buffer.commit()
            while (event := await asyncio.wait_for(conn.recv(), 10)).type != "input_audio_buffer.committed":
                assert event.type != "error", event
