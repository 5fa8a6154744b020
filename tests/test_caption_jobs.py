"""When an utterance is captioned and what the listener gets of each transcription
(assistant/conversation/captioning.py), as pure code: positions in samples at 24 kHz."""

from __future__ import annotations

from assistant.conversation.captioning import UtteranceCaptions

MS = 24  # samples per ms
EVERY, PAUSE, TAIL = 1000 * MS, 200 * MS, 200 * MS


def captions() -> UtteranceCaptions:
    return UtteranceCaptions(EVERY, PAUSE, TAIL)


def speak(c: UtteranceCaptions, start_ms: int, end_ms: int, step_ms: int = 40) -> list:
    """The user speaks from start_ms to end_ms (the VAD's voiced end follows the position)."""
    jobs = []
    for at in range(start_ms + step_ms, end_ms + 1, step_ms):
        job = c.progress(at * MS, at * MS)
        if job:
            jobs.append(job)
    return jobs


def quiet(c: UtteranceCaptions, voiced_end_ms: int, until_ms: int, step_ms: int = 40) -> list:
    jobs = []
    for at in range(voiced_end_ms + step_ms, until_ms + 1, step_ms):
        job = c.progress(at * MS, voiced_end_ms * MS)
        if job:
            jobs.append(job)
    return jobs


def test_interims_come_every_second_of_speech_and_the_final_job_at_the_first_pause():
    c = captions()
    c.speech_started(700 * MS, 1000 * MS)  # onset 1000 ms, 300 ms of prefix padding
    interims = speak(c, 1000, 4000)
    assert [(j.kind, j.start, j.end) for j in interims] == [
        ("interim", 700 * MS, 2000 * MS),
        ("interim", 700 * MS, 3000 * MS),
        ("interim", 700 * MS, 4000 * MS),
    ]
    (pause,) = quiet(c, 4000, 4480)  # one job for this pause, however long it lasts
    assert (pause.kind, pause.start, pause.end, pause.voiced_end) == ("pause", 700 * MS, 4200 * MS, 4000 * MS)
    # The VAD ends the turn where the pause began: the pause job's transcript is the final one.
    assert c.speech_stopped(4000 * MS, 4500 * MS) == (None, [])
    assert c.transcribed(pause, "What is the capital of Australia?") == [
        ("delta", "What is the capital of Australia?"),
        ("final", "What is the capital of Australia?"),
    ]


def test_a_pause_transcript_ready_before_the_end_of_turn_is_final_at_once():
    c = captions()
    c.speech_started(0, 300 * MS)
    speak(c, 300, 900)
    (pause,) = quiet(c, 900, 1200)
    # The words go out as soon as they are known, before the VAD's end of turn ...
    assert c.transcribed(pause, "Wait, stop.") == [("delta", "Wait, stop.")]
    # ... and the turn's end makes them final without another transcription.
    assert c.speech_stopped(900 * MS, 1400 * MS) == (None, [("final", "Wait, stop.")])


def test_interims_pass_on_only_words_two_transcriptions_agree_on_and_never_a_word_twice():
    c = captions()
    c.speech_started(0, 300 * MS)
    first, second, third = speak(c, 300, 3300)
    assert c.transcribed(first, "What is the cap") == []  # nothing to agree with yet
    assert c.transcribed(second, "What is the capital of Aus") == [("delta", "What is the")]
    assert c.transcribed(third, "What is the capital of Australia and") == [("delta", " capital of")]
    (pause,) = quiet(c, 3300, 3600)
    c.speech_stopped(3300 * MS, 3800 * MS)
    assert c.transcribed(pause, "What is the capital of Australia?") == [
        ("delta", " Australia?"),
        ("final", "What is the capital of Australia?"),
    ]
    assert c.transcribed(third, "late") == []  # the utterance is done


def test_speech_after_a_pause_keeps_the_utterance_open_and_its_end_gets_a_final_job():
    c = captions()
    c.speech_started(0, 300 * MS)
    speak(c, 300, 800)
    (pause,) = quiet(c, 800, 1040)
    assert c.transcribed(pause, "Wait, wait,") == [("delta", "Wait, wait,")]
    speak(c, 1040, 2000)  # the user goes on
    job, ready = c.speech_stopped(2000 * MS, 2100 * MS)  # a VAD set to end turns after 100 ms
    assert ready == [] and (job.kind, job.start, job.end) == ("final", 0, 2100 * MS)
    assert c.transcribed(job, "Wait, wait, stop.") == [("delta", " stop."), ("final", "Wait, wait, stop.")]


def test_interims_overtaken_by_the_end_of_the_turn_are_dropped():
    c = captions()
    c.speech_started(0, 300 * MS)
    (interim,) = speak(c, 300, 1300)
    (pause,) = quiet(c, 1300, 1500)
    c.speech_stopped(1300 * MS, 1800 * MS)
    assert c.transcribed(interim, "Hello there") == []
    assert c.transcribed(pause, "Hello there.")[-1] == ("final", "Hello there.")


def test_two_readings_agree_on_a_word_whatever_its_case_or_punctuation():
    c = captions()
    c.speech_started(0, 300 * MS)
    first, second, _ = speak(c, 300, 3300)
    c.transcribed(first, "Hi there can")
    assert c.transcribed(second, "Hi there, Can you tell") == [("delta", "Hi there, Can")]


def test_a_pause_timed_from_the_end_of_the_sound_is_final_where_the_vad_lets_go_later():
    c = captions()
    c.speech_started(0, 300 * MS)
    speak(c, 300, 2000)
    (pause,) = quiet(c, 2000, 2280)  # the sound ended at 2000 ms
    assert (pause.end, pause.voiced_end) == (2200 * MS, 2000 * MS)
    # The classifier heard voice up to 2100 ms: the turn's end lies inside what the pause job read.
    assert c.speech_stopped(2100 * MS, 2600 * MS) == (None, [])
    assert c.span(pause) == (0, 2100 * MS)  # the turn as the VAD cut it
    assert c.transcribed(pause, "Stop.") == [("delta", "Stop."), ("final", "Stop.")]


def test_voice_after_what_a_pause_job_read_gets_a_final_job():
    c = captions()
    c.speech_started(0, 300 * MS)
    speak(c, 300, 2000)
    (pause,) = quiet(c, 2000, 2200)
    # A soft sound the trail missed, voiced to the classifier past the pause job's 2200 ms.
    job, ready = c.speech_stopped(2240 * MS, 2740 * MS)
    assert ready == [] and (job.kind, job.end) == ("final", 2440 * MS)
    assert c.transcribed(pause, "Stop") == [("delta", "Stop")]  # not final: it missed the end
    assert c.transcribed(job, "Stop it.") == [("delta", " it."), ("final", "Stop it.")]


def test_a_pause_reading_that_did_not_work_leaves_a_final_job_over_the_same_audio():
    c = captions()
    c.speech_started(0, 300 * MS)
    speak(c, 300, 2000)
    (pause,) = quiet(c, 2000, 2200)
    assert c.speech_stopped(2100 * MS, 2600 * MS) == (None, [])  # waiting on the pause job
    job = c.unread(pause)
    assert (job.kind, job.start, job.end, job.voiced_end) == ("final", 0, 2200 * MS, 2100 * MS)
    assert c.transcribed(job, "Stop.") == [("delta", "Stop."), ("final", "Stop.")]
    assert c.unread(job) is None and c.unread(pause) is None  # the utterance is done


def test_a_pause_reading_that_did_not_work_before_the_end_of_turn_gets_a_final_job_then():
    c = captions()
    c.speech_started(0, 300 * MS)
    speak(c, 300, 2000)
    (pause,) = quiet(c, 2000, 2200)
    assert c.unread(pause) is None  # nothing waits on it yet
    assert quiet(c, 2000, 2400) == []  # and the same pause is not read again
    job, ready = c.speech_stopped(2100 * MS, 2600 * MS)
    assert ready == [] and (job.kind, job.end) == ("final", 2300 * MS)


def test_a_pause_job_is_final_only_with_the_margin_of_quiet_after_the_end_of_the_turn():
    for stopped_ms, final in ((2150, True), (2151, False)):
        c = UtteranceCaptions(EVERY, PAUSE, TAIL, margin=50 * MS)
        c.speech_started(0, 300 * MS)
        speak(c, 300, 2000)
        (pause,) = quiet(c, 2000, 2200)  # read to 2200 ms
        job, _ = c.speech_stopped(stopped_ms * MS, 2700 * MS)
        assert (job is None) == final, stopped_ms


def test_a_pause_that_began_inside_the_last_reading_is_not_read_again():
    c = captions()
    c.speech_started(0, 300 * MS)
    speak(c, 300, 1000)
    (pause,) = quiet(c, 1000, 1200)  # read to 1200 ms
    # The classifier's late voice moves the start of the pause to 1100 ms, inside that reading.
    assert quiet(c, 1100, 1400) == []
    (later,) = quiet(c, 1250, 1450)  # a new sound after it: its pause is read
    assert later.voiced_end == 1250 * MS
    assert c.unread(pause) is None  # an older pause job is nobody's final


def test_no_interim_starts_while_the_classifier_is_in_a_gap():
    c = captions()
    c.speech_started(0, 300 * MS)
    # 1 s in, the sound stopped 100 ms ago (no pause yet), the classifier heard voice 60 ms ago.
    assert c.progress(1300 * MS, 1200 * MS, voiced_end=1240 * MS) is None
    job = c.progress(1320 * MS, 1200 * MS, voiced_end=1310 * MS)
    assert job.kind == "interim" and job.end == 1320 * MS
