"""The items a Realtime client adds to its conversation (`conversation.item.create`: user audio, an
image, or both), retrieves (`conversation.item.retrieve`), truncates (`conversation.item.truncate`:
assistant audio, to what was heard) and deletes (`conversation.item.delete`: image items only), as a
mixin of `RealtimeConversation` (server/protocols/realtime/state_machine.py), pure as it is.

An item's audio is fed to the model at real-time speed (the adapter paces it). An item's image is
checked off the event loop first: `conversation.item.create` with an `input_image` part returns a
`CheckImage` action, and the adapter answers with `image_accepted` (the image went to the engine:
the item is added, and the model sees the image from its next frames once it is encoded, replacing
the one before) or `image_refused` (an `error` naming the image's code; no item). Deleting the item
whose image the model sees removes the image; what the model heard stays in its context, so no
other item can be deleted.
"""

from __future__ import annotations

from assistant.images import ImageError
from audio.frames import FRAME_MS
from server.protocols.realtime.client_events import (
    BYTES_PER_MS,
    MAX_AUDIO_BACKLOG_MS,
    InputAudioPart,
    InputImagePart,
    ItemCreate,
    ItemDelete,
    ItemRetrieve,
    ItemTruncate,
    RealtimeError,
)
from server.protocols.realtime.records import (
    CheckImage,
    Item,
    PushAudio,
    RealtimeOutput,
    RemoveImage,
    SendEvent,
)


class ClientItems:
    """Needs of its host: `items`, `order`, `image_item_id`, `pending_image_ids`, `input_ms`,
    `audio_backlog_ms`, `_injected`, `_new_id`, `_add_user_item`, `response`, `_finish`,
    `_sync_silence`, `send` and `error`."""

    def _item_named(self, ev: ItemTruncate | ItemRetrieve | ItemDelete, code: str, message: str):
        """The item `ev.item_id` names; otherwise `code` and `message` (each operation words its own,
        as OpenAI's server does, and clients match on them) against the `item_id` param."""
        item = self.items.get(ev.item_id)
        if item is None:
            raise RealtimeError(code, message, "item_id", ev.event_id)
        return item

    def _truncate(self, ev: ItemTruncate) -> list[RealtimeOutput]:
        item = self._item_named(
            ev, "item_not_found", f"Error truncating item: the item with id {ev.item_id!r} does not exist."
        )
        if item.role != "assistant":
            raise RealtimeError(
                "invalid_value",
                f"item {ev.item_id!r} is a {item.role} item; only assistant audio can be truncated",
                "item_id",
                ev.event_id,
            )
        # Audio goes out in real time, so a client's playback clock can name more than was sent (Pipecat
        # counts wall time from the first delta): the listener heard all of it.
        end_ms = min(ev.audio_end_ms, item.audio_ms)
        out: list[RealtimeOutput] = []
        if self.response is not None and self.response.item is item:
            # The listener stopped hearing it: generating more of it makes no sense.
            out += self._finish("cancelled", "client_cancelled")
        item.audio_end_ms = end_ms
        item.pieces = [(i, p) for i, p in item.pieces if i * FRAME_MS < end_ms]
        out.append(
            self.send("conversation.item.truncated", item_id=item.id, content_index=0, audio_end_ms=end_ms)
        )
        return out + self._sync_silence()

    def _retrieve(self, ev: ItemRetrieve) -> list[RealtimeOutput]:
        """The item as the server holds it: id, role, status, transcripts (its audio is not kept)."""
        item = self._item_named(
            ev,
            "item_retrieve_invalid_item_id",
            f"Error retrieving item: the item with id {ev.item_id!r} does not exist.",
        )
        return [self.send("conversation.item.retrieved", item=item.to_json())]

    def _check_new_item(self, ev: ItemCreate) -> None:
        if ev.item.id is not None and (ev.item.id in self.items or ev.item.id in self.pending_image_ids):
            raise RealtimeError(
                "invalid_value", f"item.id {ev.item.id!r} already exists", "item.id", ev.event_id
            )
        last = self.order[-1] if self.order else None
        appending = ev.previous_item_id in (None, last) or (ev.previous_item_id == "root" and not self.order)
        if not appending:
            raise RealtimeError(
                "unsupported_feature",
                "items can only be appended at the end of the conversation "
                "(previous_item_id must be the last item or omitted)",
                "previous_item_id",
                ev.event_id,
            )

    def _item_create(
        self, ev: ItemCreate, item_id: str | None = None, image: bool = False
    ) -> list[RealtimeOutput]:
        """An item of user audio (and an image already handed to the engine, `image`)."""
        if item_id is None:
            self._check_new_item(ev)
        part, item_ms = self._item_audio(ev)
        start = self.input_ms
        self.input_ms += item_ms
        self._injected.append((start, self.input_ms))
        out: list[RealtimeOutput] = [PushAudio(part.audio, paced=True)]
        return out + self._add_user_item(
            item_id or ev.item.id or self._new_id("item"),
            start,
            self.input_ms,
            part.transcript,
            committed=False,
            image=image,
        )

    def _item_audio(self, ev: ItemCreate) -> tuple[InputAudioPart, float]:
        """The item's audio part and its length in ms, if the backlog of audio to be heard has room."""
        index, part = ev.item.part(InputAudioPart)
        item_ms = len(part.audio) / BYTES_PER_MS
        if self.audio_backlog_ms + item_ms > MAX_AUDIO_BACKLOG_MS:
            raise RealtimeError(
                "input_audio_backlog_full",
                f"{self.audio_backlog_ms / 1000:.1f} s of audio are still waiting to be heard (item audio is "
                f"fed at real-time speed) and this item adds {item_ms / 1000:.1f} s; at most "
                f"{MAX_AUDIO_BACKLOG_MS / 1000:g} s may wait: send it once the model has heard more",
                f"item.content[{index}].audio",
                ev.event_id,
            )
        return part, item_ms

    def _image_item_create(self, ev: ItemCreate) -> list[RealtimeOutput]:
        self._check_new_item(ev)
        if ev.item.part(InputAudioPart)[1] is not None:
            self._item_audio(ev)
        item_id = ev.item.id or self._new_id("item")
        self.pending_image_ids.add(item_id)
        return [CheckImage(ev, item_id)]

    def image_accepted(self, check: CheckImage) -> list[RealtimeOutput]:
        """The item's image passed its checks and went to the engine: the item joins the conversation."""
        self.pending_image_ids.discard(check.item_id)
        self.image_item_id = check.item_id
        ev = check.event
        try:
            if ev.item.part(InputAudioPart)[1] is not None:
                return self._item_create(ev, check.item_id, image=True)
        except RealtimeError as err:  # the audio cannot be taken now; the image stays
            return [SendEvent(self.error(err))]
        previous = self.order[-1] if self.order else None
        item = Item(
            check.item_id, "user", start_ms=self.input_ms, end_ms=self.input_ms, audio=False, image=True
        )
        self.items[item.id] = item
        self.order.append(item.id)
        return [
            self.send(kind, previous_item_id=previous, item=item.to_json())
            for kind in ("conversation.item.added", "conversation.item.done")
        ]

    def image_refused(self, check: CheckImage, error: ImageError) -> list[RealtimeOutput]:
        """The item's image cannot be shown (`error.code`): the item is not added."""
        self.pending_image_ids.discard(check.item_id)
        index, _ = check.event.item.part(InputImagePart)
        error_type = "server_error" if error.code == "internal_error" else "invalid_request_error"
        param = f"item.content[{index}].image_url"
        refusal = RealtimeError(error.code, str(error), param, check.event.event_id, error_type)
        return [SendEvent(self.error(refusal))]

    def _item_delete(self, ev: ItemDelete) -> list[RealtimeOutput]:
        item = self._item_named(ev, "item_not_found", f"no item {ev.item_id!r} in this conversation")
        if not item.image:
            raise RealtimeError(
                "unsupported_feature",
                f"item {item.id!r} cannot be deleted: what the model heard is in its context; only an "
                "item holding an image can be deleted (the model stops seeing it)",
                "item_id",
                ev.event_id,
            )
        del self.items[item.id]
        self.order.remove(item.id)
        out: list[RealtimeOutput] = []
        if item.id == self.image_item_id:
            self.image_item_id = None
            out.append(RemoveImage())
        return [*out, self.send("conversation.item.deleted", item_id=item.id)]
