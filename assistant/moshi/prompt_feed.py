"""The prompt half of MoshiEngine (a mixin): a PersonaPlex slot's voice and role prompt, fed into
the model after each tick's live step within a share of the frame's spare time, then loaded into
the slot's row (or parked while the slot is held)."""

from __future__ import annotations

import logging
import time

import torch

from assistant.engine import FRAME_MS, SlotOptions
from assistant.moshi.persona import Prompter, PromptJob

log = logging.getLogger(__name__)

MIN_PREFILL_CHUNK = 4  # prompt positions fed per tick at least, so a prompt always gets in


class PromptSlots:
    """Needs `prompter` (None for a model without prompts), `lm`, `live`, `held`, the slot/row maps
    (`_slot_at`, `_new_row`), the prompt state (`_jobs`, `_prompt_of`, `_held`, `_parked`,
    `_failed`, `_broken`), `prefill_mode`, `prefill_chunk`, `prefill_stats`, `_row_sampling` and
    the Engine base's checks."""

    prompter: Prompter | None

    @property
    def takes_prompts(self) -> bool:
        return self.prompter is not None

    def voices(self) -> list[str]:
        return self.prompter.voice_names() if self.prompter else []

    def check_prompt(self, instructions: str | None, voice: str | None) -> None:
        if self.prompter is None:
            super().check_prompt(instructions, voice)
        else:
            self.prompter.check(instructions, voice)

    def is_ready(self, slot: int) -> bool:
        return bool(self.live[slot]) and slot not in self._jobs and slot not in self._broken

    def add_voice(self, path: str) -> str:
        if self.prompter is None:
            return super().add_voice(path)
        return self.prompter.add_voice(path)

    def finish_prompts(self) -> None:
        """Feed every pending prompt, and encode every pending image, now (offline runs)."""
        self._advance_prompts(all_now=True)
        self._advance_images(time.perf_counter(), all_now=True)
        if self._failed:
            slot, reason = next(iter(self._failed.items()))
            raise RuntimeError(f"slot {slot}: the prompt could not be fed: {reason}")

    def _prompt_key(self, options: SlotOptions) -> tuple[str | None, str | None]:
        """What decides a slot's prompt: the stripped instructions and the resolved voice."""
        instructions = (options.instructions or "").strip() or None
        return instructions, self.prompter.resolve_voice(options.voice)

    def _start_prompt(self, slot: int, options: SlotOptions) -> None:
        """Queue `slot`'s prompt. Its voice is encoded and its prefill run by the next steps (in the
        frame loop's thread, never the caller's); the slot gets its row when the prefill is done."""
        self._prompt_of[slot] = self._prompt_key(options)
        self._jobs[slot] = None  # built by _advance_prompts
        self._held[slot] = 0

    def _advance_prompts(self, all_now: bool = False) -> float:
        """Feed pending prompts after this tick's live step.

        With nobody live (or `all_now`), every pending prompt goes in whole. Otherwise the prompts
        share half of what is left of the 80 ms frame, oldest first, each pass at least
        MIN_PREFILL_CHUNK positions so every prompt gets in. A prompt that fails (an unreadable
        voice, no memory) ends only its own slot: it is reported in `StepOutput.failed`.
        """
        if not self._jobs:
            return 0.0
        t0 = time.perf_counter()
        waiting = bool(self._slot_at) and not all_now
        budget_ms = max(0.0, FRAME_MS - self._last_step_ms) * 0.5
        for slot in list(self._jobs):
            try:
                if self.prefill_mode == "stepwise":
                    self._activate_stepwise(slot)
                    continue
                job = self._jobs[slot]
                if job is None:
                    job = self._jobs[slot] = self.prompter.job(*self._prompt_of[slot])
                if not waiting:
                    while not job.done:
                        self._timed_advance(job, job.remaining)
                else:
                    spent_ms = (time.perf_counter() - t0) * 1000
                    self._timed_advance(job, self._positions_for(budget_ms - spent_ms))
                if job.done:
                    del self._jobs[slot]
                    if self.held[slot]:
                        self._parked[slot] = job
                    else:
                        self._activate(slot, job)
            except Exception as exc:  # this slot's prompt only: the others' frame clock goes on
                log.exception("the prompt of slot %d failed", slot)
                self._jobs.pop(slot, None)
                self._failed[slot] = f"{type(exc).__name__}: {exc}"
                self._broken.add(slot)
            if waiting and (time.perf_counter() - t0) * 1000 >= budget_ms:
                break
        spent = (time.perf_counter() - t0) * 1000
        self.prefill_stats["ms"] += spent
        return spent

    def _positions_for(self, budget_ms: float) -> int:
        """Prompt positions that fit `budget_ms` at the measured cost per position, between
        MIN_PREFILL_CHUNK and prefill_chunk (a small first pass while nothing is measured yet)."""
        if self._ms_per_position is None:
            return min(self.prefill_chunk, MIN_PREFILL_CHUNK * 4)
        fits = int(max(0.0, budget_ms) / max(self._ms_per_position, 1e-6))
        return max(MIN_PREFILL_CHUNK, min(self.prefill_chunk, fits))

    def _timed_advance(self, job: PromptJob, positions: int) -> None:
        t0 = time.perf_counter()
        done = job.advance(positions)
        if self.lm.device.type == "cuda":
            torch.cuda.synchronize(self.lm.device)
        per = (time.perf_counter() - t0) * 1000 / max(done, 1)
        old = self._ms_per_position
        self._ms_per_position = per if old is None else 0.7 * old + 0.3 * per
        self.prefill_stats["positions"] += done

    def _activate(self, slot: int, job: PromptJob) -> None:
        row = self._new_row(slot)
        self.lm.load_prompt(row, job.cache, job.tail(), self._row_sampling(slot))
        self._held[slot] = job.length
        self.prefill_stats["prompts"] += 1

    def _activate_stepwise(self, slot: int) -> None:
        from assistant.moshi.lm import PromptTail

        instructions, voice = self._prompt_of[slot]
        embeds, carry = self.prompter.embeds(instructions, voice)
        del self._jobs[slot]
        row = self._new_row(slot)
        self.lm.reset(row)
        hidden, logits = self.lm.prefill_stepwise(row, embeds)
        tail = PromptTail(hidden=hidden, text_logits=logits, carry=carry, length=int(embeds.shape[0]))
        self.lm.load_prompt(row, None, tail, self._row_sampling(slot))
        self._held[slot] = tail.length
        self.prefill_stats["positions"] += int(embeds.shape[0])
        self.prefill_stats["prompts"] += 1
