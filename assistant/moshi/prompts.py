"""Role and voice prompts of PersonaPlex-family models, as the frames the model is fed before a conversation.

A prompted model hears, before the user speaks, four phases of one frame per 80 ms step, every
stream given (nothing is sampled):

1. the voice: the assistant stream holds the voice sample's Mimi codes, the text stream the pad
   token, the user stream a 440 Hz tone (`SINE_TOKENS`);
2. half a second of silence (assistant `SILENCE_TOKENS`, text pad, user tone);
3. the role text wrapped as ``<system> ... <system>``, one SentencePiece token per frame (assistant
   silence, user tone);
4. half a second of silence again.

Phases 1-2 depend on the voice only: that prefix is computed once per voice and copied into new
slots. A voice is a WAV (any rate, loudness-normalised to -24 LUFS before encoding) or a `.pt`
preset holding the input embeddings of its frames and the token cache after them.

`prompt_positions` turns the frames into what the temporal transformer reads at each position
(each stream shifted by its delay, initial tokens at the start), which is what makes a one-pass
prefill possible: all of it is known before the conversation starts.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from audio.frames import FRAME_SAMPLES, SAMPLE_RATE_HZ

# Mimi codes (8 codebooks, 2048 codes each) of digital silence and of a 440 Hz tone, as the
# PersonaPlex models were trained with; checkpoints with another codec give theirs in config.json.
SILENCE_TOKENS = (948, 243, 1178, 546, 1736, 1030, 1978, 2008)
SINE_TOKENS = (430, 1268, 381, 1611, 1095, 1495, 56, 472)
PROMPT_TEXT_ID = 3  # the text stream's pad token, used wherever a prompt frame has no text
SPACER_FRAMES = 6  # half a second at 12.5 frames per second
VOICE_LOUDNESS_LUFS = -24.0
VOICE_SUFFIXES = (".wav", ".pt")


class PromptError(ValueError):
    """A prompt that cannot be used: unknown voice, unreadable file, too long for the context."""


def system_text(instructions: str) -> str:
    """The role text as the model was trained to read it: wrapped in ``<system>`` tags once."""
    cleaned = instructions.strip()
    if cleaned.startswith("<system>") and cleaned.endswith("<system>"):
        return cleaned
    return f"<system> {cleaned} <system>"


@dataclass
class Voice:
    """A voice prompt, ready to be fed.

    codes: long (F, 8), the voice sample's Mimi codes (a WAV voice), or None;
    embeds: float (E, D), input embeddings of the first E positions (a `.pt` preset), or None;
    last_position: long (17,), the input tokens at position E (`.pt` only);
    carry: long (17,), the delayed streams' tokens of position E + 1 (`.pt` only; -1 elsewhere).
    """

    name: str
    codes: torch.Tensor | None = None
    embeds: torch.Tensor | None = None
    last_position: torch.Tensor | None = None
    carry: torch.Tensor | None = None

    @property
    def frames(self) -> int:
        if self.codes is not None:
            return int(self.codes.shape[0])
        return 0 if self.embeds is None else int(self.embeds.shape[0]) + 1


def voice_audio(path: Path) -> np.ndarray:
    """A voice WAV as float32 mono at 24 kHz, loudness-normalised to -24 LUFS (ITU-R BS.1770)."""
    import pyloudnorm
    import soundfile

    from audio.resample import resample

    try:
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:
        raise PromptError(f"voice {path.name}: cannot read it as audio ({exc})") from exc
    audio = audio[:, 0]
    if rate != SAMPLE_RATE_HZ:
        audio = resample(audio, rate, SAMPLE_RATE_HZ)
    if audio.size < FRAME_SAMPLES:
        raise PromptError(f"voice {path.name}: shorter than one 80 ms frame")
    meter = pyloudnorm.Meter(SAMPLE_RATE_HZ)
    loudness = meter.integrated_loudness(audio.astype(np.float64))
    if not np.isfinite(loudness):
        raise PromptError(f"voice {path.name}: silent, nothing to take a voice from")
    import warnings

    with warnings.catch_warnings():  # pyloudnorm warns when peaks pass 0 dBFS; the model was fed them as is
        warnings.simplefilter("ignore")
        normalised = pyloudnorm.normalize.loudness(audio.astype(np.float64), loudness, VOICE_LOUDNESS_LUFS)
    return normalised.astype(np.float32)


def voice_frames(audio: np.ndarray) -> np.ndarray:
    """Whole 80 ms frames (F, 1920), the last one padded with zeros."""
    frames = -(-audio.size // FRAME_SAMPLES)
    padded = np.zeros(frames * FRAME_SAMPLES, dtype=np.float32)
    padded[: audio.size] = audio
    return padded.reshape(frames, FRAME_SAMPLES)


def load_pt_voice(path: Path, name: str, delays: tuple[int, ...]) -> Voice:
    """A `.pt` preset: {"embeddings": (E, 1, 1, D), "cache": (1, 17, R)} saved after its voice frames."""
    if max(delays) != 1:
        raise PromptError(f"voice {name}: .pt presets need stream delays of at most 1 frame")
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
        embeds = state["embeddings"].float().reshape(-1, state["embeddings"].shape[-1])
        cache = state["cache"].long()
    except Exception as exc:
        raise PromptError(f"voice {name}: not a voice preset ({exc})") from exc
    if cache.dim() != 3 or cache.shape[1] != len(delays):
        raise PromptError(f"voice {name}: its token cache has shape {list(cache.shape)}, expected (1, 17, R)")
    ring = cache.shape[2]
    frames = embeds.shape[0] + 1  # the preset's voice steps; the last position is read from its cache
    last = cache[0, :, (frames - 1) % ring].clone()
    nxt = cache[0, :, frames % ring]
    delayed = torch.tensor([d > 0 for d in delays])
    carry = torch.where(delayed, nxt, torch.full_like(nxt, -1))
    return Voice(name=name, embeds=embeds, last_position=last, carry=carry)


def find_voices(directory: Path) -> dict[str, Path]:
    """Voice presets of a checkpoint: `voices/*.wav|*.pt`, extracting `voices.tgz` next to it once."""
    voices_dir = directory / "voices"
    archive = directory / "voices.tgz"
    if not voices_dir.is_dir() and archive.is_file():
        target = _extract_dir(directory)
        if not (target / "voices").is_dir():
            with tarfile.open(archive, "r:gz") as tar:
                tar.extractall(target, filter="data")
        voices_dir = target / "voices"
    if not voices_dir.is_dir():
        return {}
    found: dict[str, Path] = {}
    for path in sorted(voices_dir.iterdir()):
        if path.suffix in VOICE_SUFFIXES and path.is_file():
            found[path.name] = path
    return found


def _extract_dir(directory: Path) -> Path:
    """Where voices.tgz is unpacked: beside it when writable, else under the user's cache."""
    import hashlib
    import os

    if os.access(directory, os.W_OK):
        return directory
    key = hashlib.sha1(str(directory.resolve()).encode()).hexdigest()[:16]
    target = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "assistant" / "voices" / key
    target.mkdir(parents=True, exist_ok=True)
    return target


def prompt_frames(
    n: int, text: int | list[int], agent: tuple[int, ...], user: tuple[int, ...]
) -> torch.Tensor:
    """n un-delayed frames (n, 1 + 2K): text token(s), assistant codes, user codes."""
    texts = [text] * n if isinstance(text, int) else list(text)
    rows = [[t, *agent, *user] for t in texts]
    return torch.tensor(rows, dtype=torch.long).reshape(len(rows), 1 + len(agent) + len(user))


def prompt_positions(
    frames: torch.Tensor,
    delays: tuple[int, ...],
    initial: torch.Tensor,
    *,
    start: int = 0,
    history: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """What the temporal transformer reads at each position while `frames` are fed.

    frames: long (N, 17), un-delayed, the first one fed at position `start`. history: long
    (max_delay, 17), the frames before them (None: the conversation's start). Stream k at
    position p holds frame p - delay_k, or its initial token while p <= delay_k (as a step does).
    Returns (positions (N, 17), carry (17,)): carry holds the next position's delayed streams and
    -1 where the model will choose.
    """
    max_delay = max(delays)
    if history is None:
        history = initial[None, :].expand(max_delay, -1)
    full = torch.cat([history.to(frames.dtype), frames]) if max_delay else frames
    n = frames.shape[0]
    index = torch.arange(n)[:, None] + max_delay - torch.tensor(delays)[None, :]
    positions = full.gather(0, index)
    absolute = start + torch.arange(n)[:, None]
    at_start = absolute <= torch.tensor(delays)[None, :]
    positions = torch.where(at_start, initial[None, :].expand(n, -1), positions)
    carry = torch.full((len(delays),), -1, dtype=torch.long)
    for k, d in enumerate(delays):
        if d > 0:
            carry[k] = full[max_delay + n - d, k]
    return positions, carry


def carry_history(carry: torch.Tensor, delays: tuple[int, ...]) -> torch.Tensor:
    """A one-frame history whose delayed streams give `carry` (the frame before, for delays of 1)."""
    return torch.where(carry >= 0, carry, torch.zeros_like(carry))[None, :]
