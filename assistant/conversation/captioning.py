"""When a user utterance is transcribed, and what of each transcription reaches the listener, as
pure code (input sample positions in, caption jobs and transcript pieces out).

Three kinds of job per utterance (all from its start, prefix padding included, to the audio so far):
- `interim`: every `interim_every` samples while the user is still speaking (never in a gap of a
  quarter of `pause`: a pause job may be due, and the worker takes one job at a time). Whisper revises what
  it heard as more audio comes, so of an interim only the words two transcriptions in a row agree
  on are passed on (the last word, perhaps cut, never), and never a word twice;
- `pause`: once the user has been quiet `pause` samples inside the turn, long before the VAD's end
  of turn (its min_silence_ms, 500 ms by default): the transcript of everything said so far, ready
  when the turn ends. Its words are all passed on at once (the audio through a pause is whole);
  when the turn ends inside the audio it read (no voice came after it), it is the final transcript.
  The pause is timed from where the user's sound ended (`quiet_since`), which a listener hears up
  to 100 ms before the VAD's classifier stops calling frames voiced;
- `final`: at the end of the turn when no pause job covers it (a turn cut short of `pause`).

`transcribed` turns a job's text into ("delta", words) pieces, which concatenate (later ones lead
with a space), and one ("final", text) per utterance, the whole transcript of its last job, which a
client uses in place of the deltas (they may differ where the last transcription revised a word
already passed on).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class CaptionJob:
    """Transcribe input samples [start, end) of `utterance`; `voiced_end`: where its speech ended
    as far as the job knows (a pause or final job's end before the tail of quiet added to it)."""

    utterance: int
    kind: str  # "interim" | "pause" | "final"
    start: int
    end: int
    voiced_end: int


@dataclass
class _Utterance:
    id: int
    start: int
    next_interim: int
    sent: list[str] = field(default_factory=list)  # words passed on as deltas
    hypothesis: list[str] = field(default_factory=list)  # the last interim's words
    pause: CaptionJob | None = None  # the last pause job
    pause_text: str | None = None  # its transcript
    pause_unread: bool = False  # its quick reading did not work
    stopped_end: int | None = None  # the VAD's end of speech, once the turn ended


class UtteranceCaptions:
    """One conversation's utterances and their caption jobs (positions in input samples)."""

    def __init__(self, interim_every: int, pause: int, tail: int, margin: int = 0):
        """margin: quiet a pause job must hold after the VAD's end of the turn to be its final
        transcript (a soft last sound the classifier still heard is read whole)."""
        self.interim_every = interim_every
        self.pause = pause
        self.tail = tail
        self.margin = margin
        self._current: _Utterance | None = None
        self._finishing: dict[int, _Utterance] = {}  # turns ended, their final transcript to come
        self._count = 0

    def reset(self) -> None:
        """Forget every utterance (captions turned off): jobs in flight come back as nothing."""
        self._current = None
        self._finishing.clear()

    def speech_started(self, audio_start: int, position: int) -> None:
        self._count += 1
        self._current = _Utterance(self._count, audio_start, position + self.interim_every)

    def progress(self, position: int, quiet_since: int, voiced_end: int | None = None) -> CaptionJob | None:
        """The job due now, if any: `position` is the input so far, `quiet_since` where the user's
        sound last ended (the VAD's `quiet_since`), `voiced_end` where its classifier last heard
        voice (no interim is started in a gap: a pause job may be due; default `quiet_since`)."""
        u = self._current
        if u is None:
            return None
        if position - quiet_since >= self.pause:
            if u.pause is not None and quiet_since <= u.pause.end:
                return None  # this pause began inside what the last pause job read
            u.pause = CaptionJob(u.id, "pause", u.start, min(quiet_since + self.tail, position), quiet_since)
            u.pause_text, u.pause_unread = None, False
            return u.pause
        voiced_end = quiet_since if voiced_end is None else voiced_end
        if position >= u.next_interim and position - voiced_end < self.pause // 4:
            u.next_interim = position + self.interim_every
            return CaptionJob(u.id, "interim", u.start, position, quiet_since)
        return None

    def speech_stopped(self, end: int, position: int) -> tuple[CaptionJob | None, list[tuple[str, str]]]:
        """The turn ended at `end` (the VAD's voiced end): the final job, unless the last pause job
        read through `end` (then its transcript, if it came already, is the final one: returned
        as pieces)."""
        u, self._current = self._current, None
        if u is None:
            return None, []
        u.stopped_end = end
        self._finishing[u.id] = u
        if self._covers(u, u.pause):
            return None, ([] if u.pause_text is None else self._finish(u, u.pause_text))
        return CaptionJob(u.id, "final", u.start, min(end + self.tail, position), end), []

    def transcribed(self, job: CaptionJob, text: str) -> list[tuple[str, str]]:
        """A job's transcript -> the pieces for the listener: ("delta", text) and ("final", text)."""
        u = self._utterance_of(job)
        if u is None:
            return []  # its final transcript went out already
        words = text.split()
        if job.kind == "final" or (job.kind == "pause" and self._covers(u, job)):
            return self._finish(u, text)
        if job.kind == "pause":
            if u.stopped_end is None and job == u.pause:
                u.pause_text = text  # the final transcript, if the turn ends inside what it read
            u.hypothesis = words
            return self._deltas(u, words)
        if u.stopped_end is not None:
            return []  # an interim overtaken by the end of the turn
        agreed = []
        for a, b in zip(u.hypothesis, words[:-1], strict=False):
            if _plain(a) != _plain(b):  # "there" then "there,": the same word, read on
                break
            agreed.append(b)
        u.hypothesis = words
        return self._deltas(u, agreed)

    def unread(self, job: CaptionJob) -> CaptionJob | None:
        """A job's quick reading did not work (a pause job is read only in a short window): the
        final job over the same audio when the ended turn was waiting on it, else None."""
        u = self._utterance_of(job)
        if u is None or job.kind != "pause" or job != u.pause:
            return None
        waited = self._covers(u, job)
        u.pause_unread = True
        return CaptionJob(u.id, "final", job.start, job.end, u.stopped_end) if waited else None

    def _utterance_of(self, job: CaptionJob) -> _Utterance | None:
        """The utterance a job was made for, while its transcript is still to come."""
        u = self._finishing.get(job.utterance)
        if u is None and self._current is not None and self._current.id == job.utterance:
            u = self._current
        return u

    def _covers(self, u: _Utterance, job: CaptionJob | None) -> bool:
        """Whether `job` is the last pause job of an ended turn, read all its voice (and `margin`
        after it) and can be read."""
        return (
            job is not None
            and job == u.pause
            and not u.pause_unread
            and u.stopped_end is not None
            and u.stopped_end + self.margin <= job.end
        )

    def _deltas(self, u: _Utterance, words: list[str]) -> list[tuple[str, str]]:
        new = words[len(u.sent) :]
        if not new:
            return []
        delta = (" " if u.sent else "") + " ".join(new)
        u.sent += new
        return [("delta", delta)]

    def _finish(self, u: _Utterance, text: str) -> list[tuple[str, str]]:
        self._finishing.pop(u.id, None)
        if not text.strip():
            return []
        return self._deltas(u, text.split()) + [("final", text.strip())]

    def span(self, job: CaptionJob) -> tuple[int, int]:
        """Where the utterance of `job` sits on the input timeline: (start, end of speech so far)."""
        u = self._finishing.get(job.utterance)
        end = u.stopped_end if u is not None and u.stopped_end is not None else job.voiced_end
        return job.start, end


def _plain(word: str) -> str:
    """A word as two readings are compared: without case or the punctuation around it."""
    return word.strip(".,!?;:\"'-").lower()
