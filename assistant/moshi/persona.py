"""Role and voice prompts for one engine: validate them, build their frames, prefill them without stalls.

`Prompter` knows a prompted checkpoint's voices and turns (instructions, voice) into input
embeddings for every prompt position (see `assistant.moshi.prompts` for the phases). A
`PromptJob` prefills them into a private `PrefillCache`, a chunk of positions per call, so an
engine can spread a long prompt over several ticks while other conversations keep their frame
clock; when done, `MoshiStreamingLM.load_prompt` moves it into the slot's row.

The voice prefix (voice frames + the first half second of silence) does not depend on the role
text: the first job with a voice keeps a copy of its cache, and later ones start from it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import torch

from assistant.engine import MAX_PROMPT_CHARS
from assistant.moshi.lm import MoshiStreamingLM, PrefillCache, PromptTail
from assistant.moshi.loading import LoadedMoshi
from assistant.moshi.prompts import (
    PROMPT_TEXT_ID,
    SPACER_FRAMES,
    PromptError,
    Voice,
    carry_history,
    load_pt_voice,
    prompt_frames,
    prompt_positions,
    system_text,
    voice_audio,
    voice_frames,
)
from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ

DEFAULT_CHUNK_FRAMES = 64  # prompt positions per prefill pass; a 7B pass of 64 costs about one step
# Remembered per voice, least recently used dropped first: a 7B voice prefix (~100 frames of keys and
# values) is ~50 MB of GPU memory, and clients may name any number of voice files.
MAX_VOICE_PREFIXES = 8
MAX_VOICES = 32


@dataclass
class _Prefix:
    """A voice's prefix, computed once: its keys/values, last output and what it carries on."""

    cache: PrefillCache
    hidden: torch.Tensor
    text_logits: torch.Tensor
    carry: torch.Tensor


class PromptJob:
    """The prefill of one slot's prompt, advanced a chunk at a time (`advance`) until `done`."""

    def __init__(
        self,
        prompter: Prompter,
        voice_key: str | None,
        embeds: torch.Tensor,
        carry: torch.Tensor,
        prefix: _Prefix | None,
        prefix_length: int,
        prefix_carry: torch.Tensor | None = None,
    ):
        self.prompter = prompter
        self.voice_key = voice_key
        self.carry = carry
        self.length = prefix_length + int(embeds.shape[0]) if prefix is not None else int(embeds.shape[0])
        self._embeds = embeds
        self._done_positions = 0
        if prefix is not None:  # start from the shared voice prefix
            self.cache = prefix.cache.copy(capacity=self.length)
            self._hidden, self._logits = prefix.hidden, prefix.text_logits
            self._snapshot_at = None
        else:
            self.cache = prompter.lm.new_prefill_cache(self.length)
            self._hidden = self._logits = None
            self._snapshot_at = prefix_length if voice_key is not None else None
        self._prefix_carry = prefix_carry

    @property
    def done(self) -> bool:
        return self._done_positions >= self._embeds.shape[0]

    @property
    def remaining(self) -> int:
        return int(self._embeds.shape[0]) - self._done_positions

    def advance(self, max_positions: int) -> int:
        """Prefill up to `max_positions` more positions; returns how many were done."""
        if self.done:
            return 0
        n = min(max_positions, self.remaining)
        if self._snapshot_at is not None and self.cache.length < self._snapshot_at:
            n = min(n, self._snapshot_at - self.cache.length)  # stop at the voice prefix's end once
        chunk = self._embeds[self._done_positions : self._done_positions + n]
        self._hidden, self._logits = self.prompter.lm.prefill(self.cache, chunk)
        self._done_positions += n
        if self._snapshot_at is not None and self.cache.length == self._snapshot_at:
            self.prompter.remember_prefix(
                self.voice_key, _Prefix(self.cache.copy(), self._hidden, self._logits, self._prefix_carry)
            )
            self._snapshot_at = None
        return n

    def tail(self) -> PromptTail:
        if not self.done:
            raise RuntimeError("the prompt is not prefilled yet")
        return PromptTail(hidden=self._hidden, text_logits=self._logits, carry=self.carry, length=self.length)


class Prompter:
    """The prompts of one prompted model: its voices, validation, frames and prefill jobs."""

    def __init__(self, lm: MoshiStreamingLM, loaded: LoadedMoshi, codec_model=None):
        self.lm = lm
        self.loaded = loaded
        self.codec_model = codec_model
        self.delays = tuple(lm.delays)
        if max(self.delays) > 1:
            raise PromptError("prompts need stream delays of at most one frame")
        K = lm.num_codebooks
        self.silence = tuple(loaded.silence_tokens[:K])
        self.sine = tuple(loaded.sine_tokens[:K])
        for name, codes in (("silence_tokens", self.silence), ("sine_tokens", self.sine)):
            if len(codes) != K or not all(0 <= c < lm.card for c in codes):
                raise PromptError(
                    f"{name} {list(codes)} do not fit this model ({K} codebooks of {lm.card} codes); "
                    "give the codec's own in config.json"
                )
        self._initial = torch.tensor([lm.text_card] + [lm.card] * (2 * K), dtype=torch.long)
        self._voices: OrderedDict[str, Voice] = OrderedDict()
        self._prefixes: OrderedDict[str, _Prefix] = OrderedDict()

    # -- what a client may ask for ----------------------------------------------------------------
    def voice_names(self) -> list[str]:
        return sorted(self.loaded.voices)

    def resolve_voice(self, voice: str | None) -> str | None:
        """The key of `voice`: a preset name (with or without suffix) or a path to a .wav / .pt file."""
        if voice is None or voice == "":
            return self.loaded.default_voice
        presets = self.loaded.voices
        if voice in presets:
            return voice
        for suffix in (".pt", ".wav"):
            if voice + suffix in presets:
                return voice + suffix
        path = Path(voice).expanduser()
        if path.suffix in (".wav", ".pt") and path.is_file():
            return str(path.resolve())
        shown = ", ".join(self.voice_names()[:24]) or "none"
        raise PromptError(
            f"unknown voice {voice!r}: use one of the model's voices ({shown}) or a .wav / .pt file"
        )

    def add_voice(self, path: str) -> str:
        """Offer a voice file as a preset named by its file name (the operator's `serve --voice FILE`)."""
        file = Path(path).expanduser().resolve()
        if file.suffix not in (".wav", ".pt") or not file.is_file():
            raise PromptError(f"voice file {path}: expected an existing .wav or .pt file")
        known = self.loaded.voices.get(file.name)
        if known is not None and Path(known).resolve() != file:
            raise PromptError(f"voice file {path}: the model already has a voice named {file.name}")
        self.voice_length(str(file))  # readable, and a voice
        self.loaded.voices[file.name] = file
        return file.name

    def instruction_ids(self, instructions: str | None) -> list[int]:
        if not instructions or not instructions.strip():
            return []
        if len(instructions) > MAX_PROMPT_CHARS:
            raise PromptError(f"instructions are {len(instructions)} characters; at most {MAX_PROMPT_CHARS}")
        return self.loaded.tokenizer.encode(system_text(instructions))

    def length(self, instructions: str | None, voice: str | None) -> int:
        """Positions the prompt takes in the model's context: voice, role text and two silences."""
        key = self.resolve_voice(voice)
        ids = self.instruction_ids(instructions)
        return (self.voice_length(key) if key else 0) + 2 * SPACER_FRAMES + len(ids)

    def check(self, instructions: str | None, voice: str | None) -> None:
        """Raise PromptError unless this prompt can be used (voice found, fits the context)."""
        total = self.length(instructions, voice)
        if total >= self.lm.context:
            raise PromptError(
                f"the prompt takes {total} frames but the model remembers {self.lm.context}; shorten the "
                "instructions or the voice sample"
            )

    # -- voices ---------------------------------------------------------------------------------
    def voice_length(self, key: str) -> int:
        """Frames the voice takes, read from its file without encoding it or remembering anything
        (`check` runs on any thread, while the frame loop may be using the model)."""
        known = self._voices.get(key)
        if known is not None:
            return known.frames
        path = self._voice_path(key)
        if path.suffix == ".pt":
            return self._load_pt(path, key).frames
        import soundfile

        try:
            info = soundfile.info(str(path))
        except Exception as exc:
            raise PromptError(f"voice {path.name}: cannot read it as audio ({exc})") from exc
        frames = -(-round(info.frames * SAMPLE_RATE_HZ / info.samplerate) // FRAME_SAMPLES)
        if frames < 1:
            raise PromptError(f"voice {path.name}: shorter than one 80 ms frame")
        return frames

    def _voice_path(self, key: str) -> Path:
        return self.loaded.voices.get(key) or Path(key)

    def _load_pt(self, path: Path, key: str) -> Voice:
        voice = load_pt_voice(path, key, self.delays)
        if voice.embeds.shape[1] != self.lm.model.config.hidden_size:
            raise PromptError(
                f"voice {key}: made for another model (embedding width {voice.embeds.shape[1]})"
            )
        return voice

    def voice(self, key: str) -> Voice:
        """The voice ready to feed (a WAV encoded once): call it from the frame loop's thread only."""
        if key not in self._voices:
            path = self._voice_path(key)
            voice = (
                self._load_pt(path, key)
                if path.suffix == ".pt"
                else Voice(name=key, codes=self._encode(voice_audio(path)))
            )
            self._voices[key] = voice
            while len(self._voices) > MAX_VOICES:
                self._voices.popitem(last=False)
        self._voices.move_to_end(key)
        return self._voices[key]

    def _encode(self, audio) -> torch.Tensor:
        """Mimi codes (F, K) of a voice sample, encoded as a stream from a fresh state."""
        from audio.mimi.codec import StreamingMimi

        if self.codec_model is None:
            raise PromptError("this engine has no codec to encode a voice sample with")
        codec = StreamingMimi(self.codec_model, 1, num_codebooks=self.lm.num_codebooks, device=self.lm.device)
        codes = [codec.encode(frame[None, :])[0].cpu() for frame in voice_frames(audio)]
        return torch.stack(codes)

    def remember_prefix(self, key: str, prefix: _Prefix) -> None:
        self._prefixes[key] = prefix
        while len(self._prefixes) > MAX_VOICE_PREFIXES:
            self._prefixes.popitem(last=False)

    # -- prompts --------------------------------------------------------------------------------
    def _silence(self, n: int, text=PROMPT_TEXT_ID) -> torch.Tensor:
        return prompt_frames(n, text, self.silence, self.sine)

    def voice_prefix(self, key: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings (V, D) of the voice frames + first silence, and the carry after them."""
        lm = self.lm
        if key is None:
            positions, carry = prompt_positions(self._silence(SPACER_FRAMES), self.delays, self._initial)
            return lm.embed_inputs(positions), carry
        voice = self.voice(key)
        if voice.codes is not None:
            frames = torch.cat(
                [
                    torch.cat(
                        [
                            torch.full((voice.frames, 1), PROMPT_TEXT_ID),
                            voice.codes.long(),
                            torch.tensor(self.sine)[None].expand(voice.frames, -1),
                        ],
                        dim=1,
                    ),
                    self._silence(SPACER_FRAMES),
                ]
            )
            positions, carry = prompt_positions(frames, self.delays, self._initial)
            return lm.embed_inputs(positions), carry
        last = lm.embed_inputs(voice.last_position[None])
        start = voice.frames
        positions, carry = prompt_positions(
            self._silence(SPACER_FRAMES),
            self.delays,
            self._initial,
            start=start,
            history=carry_history(voice.carry, self.delays),
        )
        embeds = torch.cat(
            [voice.embeds.to(lm.device, lm.dtype), last.to(lm.dtype), lm.embed_inputs(positions)]
        )
        return embeds, carry

    def role_part(self, ids: list[int], start: int, carry: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Input embeddings of the role text + final silence from position `start`, and the final carry."""
        frames = (
            torch.cat([self._silence(len(ids), ids), self._silence(SPACER_FRAMES)])
            if ids
            else self._silence(SPACER_FRAMES)
        )
        positions, carry = prompt_positions(
            frames, self.delays, self._initial, start=start, history=carry_history(carry, self.delays)
        )
        return self.lm.embed_inputs(positions), carry

    @torch.no_grad()
    def embeds(self, instructions: str | None, voice: str | None) -> tuple[torch.Tensor, torch.Tensor]:
        """The whole prompt: input embeddings (P, D) and the carry into the conversation."""
        key = self.resolve_voice(voice)
        prefix, carry = self.voice_prefix(key)
        role, carry = self.role_part(self.instruction_ids(instructions), prefix.shape[0], carry)
        return torch.cat([prefix.to(self.lm.dtype), role.to(self.lm.dtype)]), carry

    @torch.no_grad()
    def job(self, instructions: str | None, voice: str | None) -> PromptJob:
        """A prefill job for this prompt, starting from the voice's remembered prefix when there is one."""
        key = self.resolve_voice(voice)
        ids = self.instruction_ids(instructions)
        known = self._prefixes.get(key) if key is not None else None
        if known is not None:
            self._prefixes.move_to_end(key)
            role, carry = self.role_part(ids, known.cache.length, known.carry)
            return PromptJob(self, key, role.to(self.lm.dtype), carry, known, known.cache.length)
        prefix, prefix_carry = self.voice_prefix(key)
        role, carry = self.role_part(ids, prefix.shape[0], prefix_carry)
        embeds = torch.cat([prefix.to(self.lm.dtype), role.to(self.lm.dtype)])
        return PromptJob(self, key, embeds, carry, None, prefix.shape[0], prefix_carry)
