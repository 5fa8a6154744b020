"""Sample folders in FDB's layout: malformed ones named and skipped, hand-written outputs scored by hand.

The `assistant eval fdb` runs here score outputs that are already there (another system's), so
they need no model and no ASR: the stages that have their file are skipped.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from assistant.cli import main
from assistant.eval.dataset import FDB_TASKS, load_samples
from assistant.eval.pipeline import score_sample, score_task
from assistant.eval.scenarios import say

RATE = 16000


def write_wav(path: Path, seconds: float = 4.0, pcm: np.ndarray | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = np.zeros(round(seconds * RATE), np.float32) if pcm is None else pcm
    sf.write(str(path), pcm, RATE, subtype="PCM_16")


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def turn_sample(root: Path, sample_id: str, t0: float, chunks: list | None = None) -> Path:
    """A turn-taking sample of 4 s of silence; with chunks, its output.wav and output.json too."""
    folder = root / sample_id
    write_wav(folder / "input.wav")
    write_json(folder / "turn_taking.json", [{"text": "[TURN-TAKING]", "timestamp": [t0, 4.0]}])
    if chunks is not None:
        write_wav(folder / "output.wav")
        write_json(folder / "output.json", {"text": "", "chunks": chunks})
    return folder


def chunk(start, end, text="w"):
    return {"text": text, "timestamp": [start, end]}


# -- malformed folders --------------------------------------------------------------------------


def test_each_malformed_folder_is_named_with_its_file_and_the_good_ones_load(tmp_path):
    turn_sample(tmp_path, "1", 2.0)
    write_json(tmp_path / "2" / "turn_taking.json", [{"timestamp": [1.0, 2.0]}])  # no input.wav
    (tmp_path / "3").mkdir()
    (tmp_path / "3" / "input.wav").write_text("not audio")
    write_json(tmp_path / "3" / "turn_taking.json", [{"timestamp": [1.0, 2.0]}])
    write_wav(tmp_path / "4" / "input.wav")  # no turn_taking.json
    write_wav(tmp_path / "5" / "input.wav")
    (tmp_path / "5" / "turn_taking.json").write_text("[{")
    write_wav(tmp_path / "6" / "input.wav")
    write_json(tmp_path / "6" / "turn_taking.json", [{"timestamp": [3.0]}])
    write_wav(tmp_path / "7" / "input.wav")
    write_json(tmp_path / "7" / "turn_taking.json", [{"timestamp": [9.0, 9.5]}])  # after the 4 s input

    samples, errors = load_samples(tmp_path, FDB_TASKS["smooth_turn_taking"])
    assert [s.id for s in samples] == ["1"]
    assert samples[0].event_s == 2.0
    found = {e.sample_id: (e.path.relative_to(tmp_path).as_posix(), e.problem) for e in errors}
    assert found["2"] == ("2/input.wav", "missing; every sample folder needs the user's side as input.wav")
    assert found["3"][0] == "3/input.wav" and "not a readable WAV" in found["3"][1]
    assert found["4"] == ("4/turn_taking.json", "missing; this task needs it beside input.wav")
    assert found["5"][0] == "5/turn_taking.json" and "not valid JSON" in found["5"][1]
    assert found["6"] == ("6/turn_taking.json", "timestamp [3.0] is not [start, end] in seconds")
    assert found["7"][0] == "7/turn_taking.json" and "after input.wav ends (4.00 s)" in found["7"][1]


def test_backchannel_scans_only_numeric_folders_and_an_empty_dir_is_refused(tmp_path):
    write_wav(tmp_path / "10" / "input.wav")
    write_wav(tmp_path / "2" / "input.wav")
    write_wav(tmp_path / "notes" / "input.wav")
    samples, errors = load_samples(tmp_path, FDB_TASKS["backchannel"])
    assert [s.id for s in samples] == ["2", "10"] and not errors
    with pytest.raises(ValueError, match="no sample folders"):
        load_samples(tmp_path / "2", FDB_TASKS["backchannel"])


# -- scoring hand-written outputs --------------------------------------------------------------------


def test_turn_taking_tor_and_latency_from_hand_written_outputs(tmp_path):
    turn_sample(tmp_path, "1", 2.0, [chunk(2.4, 2.8), chunk(2.9, 3.6)])  # 1.2 s: takes the turn, 0.4 s late
    turn_sample(tmp_path, "2", 2.0, [chunk(2.1, 2.3)])  # one short word: no takeover
    turn_sample(tmp_path, "3", 2.0, [chunk(1.5, 3.0)])  # started before the turn ended: latency 0
    turn_sample(tmp_path, "4", 2.0, [])  # said nothing
    samples, _ = load_samples(tmp_path, FDB_TASKS["smooth_turn_taking"])
    task = score_task("smooth_turn_taking", samples, {})
    expected = [(1, pytest.approx(0.4)), (0, None), (1, 0.0), (0, None)]
    assert [(r.tor, r.latency_s) for r in task.results] == expected
    figures = task.summary()
    assert figures["tor"] == 0.5 and figures["latency_s"] == pytest.approx(0.2)  # (0.4 + 0) / 2
    assert figures["frequency"] is None and figures["jsd"] is None


def test_a_missing_end_time_counts_from_its_start_in_the_pause_task_only(tmp_path):
    folder = tmp_path / "pause" / "1"
    write_wav(folder / "input.wav")
    write_json(folder / "pause.json", [{"text": "[PAUSE]", "timestamp": [1.0, 2.5]}])
    write_wav(folder / "output.wav")
    write_json(folder / "output.json", {"text": "a b", "chunks": [chunk(1.0, 1.2), chunk(2.2, None)]})
    (sample,), _ = load_samples(tmp_path / "pause", FDB_TASKS["pause_handling"])
    assert score_sample(sample).tor == 1  # 2.2 - 1.0 = 1.2 s

    turn_sample(tmp_path / "turn", "1", 1.0, [chunk(1.0, 1.2), chunk(2.2, None)])
    (sample,), _ = load_samples(tmp_path / "turn", FDB_TASKS["smooth_turn_taking"])
    with pytest.raises(ValueError, match=r"turn/1/output\.json: the last word has no end time"):
        score_sample(sample)


def test_backchannel_count_frequency_and_jsd_from_a_hand_made_output(tmp_path):
    # output.wav: 1 s of silence, "yeah" (0.36 s), silence to 3.0 s. Silero finds it at 1.0-1.4 s
    # (FDB's 0.1 s times): one backchannel, 1 word under 1 s -> TOR 0, 1 / 3.0 s per second.
    yeah = say("yeah", tmp_path)
    pcm = np.zeros(3 * RATE, np.float32)
    pcm[RATE : RATE + yeah.shape[0]] = yeah
    folder = tmp_path / "data" / "7"
    write_wav(folder / "input.wav", 3.0)
    write_wav(folder / "output.wav", pcm=pcm)
    write_json(folder / "output.json", {"text": "Yeah.", "chunks": [chunk(1.02, 1.38, "Yeah.")]})
    (sample,), _ = load_samples(tmp_path / "data", FDB_TASKS["backchannel"])
    # 3.0 s -> int(15.0) + 1 = 16 bins; the backchannel fills bins int(1.0 / 0.2) = 5 to
    # int(1.4 / 0.2) = int(6.999...) = 6 (float division, as FDB does it); a ground truth all in
    # bin 15 is disjoint from it: JSD = sqrt(ln 2).
    truth = {"7": [0.0] * 15 + [1.0]}
    result = score_sample(sample, truth)
    assert result.backchannels == [(1.0, 1.4)]
    assert (result.tor, result.frequency) == (0, pytest.approx(1 / 3.0))
    assert result.jsd == pytest.approx(math.sqrt(math.log(2)), abs=1e-6)
    # The same timing as the ground truth, half in bin 5 and half in bin 6: JSD 0.
    assert score_sample(sample, {"7": [0.0] * 5 + [0.5, 0.5] + [0.0] * 9}).jsd == pytest.approx(0.0, abs=1e-3)
    missing = score_sample(sample, {"8": [1.0]})
    assert missing.jsd is None and "no distribution for sample 7" in missing.note


@pytest.mark.parametrize("rate", [16000, 24000])
def test_output_segments_equal_silero_vads_own_on_the_file_read_at_its_rate(tmp_path, rate):
    """output.wav is read at its own rate and resampled once, straight to Silero's 16 kHz: its speech
    segments are silero-vad's `get_speech_timestamps` (its own model) on that file, to the sample.
    A detour through 24 kHz moves an edge of this recording by 32 ms (10.334 -> 10.366 s)."""
    import soxr
    import torch
    from audio_utils import load_wav
    from silero_vad import get_speech_timestamps, load_silero_vad

    speech, speech_rate = load_wav("conversation.wav")
    folder = tmp_path / "data" / "3"
    folder.mkdir(parents=True)
    output = soxr.resample(speech, speech_rate, rate).astype(np.float32)
    sf.write(str(folder / "output.wav"), output, rate, subtype="PCM_16")
    sf.write(str(folder / "input.wav"), np.zeros_like(output), rate, subtype="PCM_16")
    write_json(folder / "output.json", {"text": "", "chunks": []})
    (sample,), _ = load_samples(tmp_path / "data", FDB_TASKS["backchannel"])

    on_file, file_rate = sf.read(str(folder / "output.wav"), dtype="float32")
    at_16k = on_file if file_rate == 16000 else soxr.resample(on_file, file_rate, 16000).astype(np.float32)
    found = get_speech_timestamps(torch.from_numpy(at_16k), load_silero_vad(), sampling_rate=16000)
    expected = [(s["start"] / 16000, s["end"] / 16000) for s in found]
    assert len(expected) == 4
    result = score_sample(sample)
    assert result.assistant_segments == expected
    short = [(round(s, 1), round(e, 1)) for s, e in expected if e - s <= 3.0]
    assert result.backchannels == short  # FDB's 0.1 s times of the segments of 3 s or less


# -- the command on outputs that are already there ----------------------------------------------------


def test_eval_fdb_scores_existing_outputs_reports_a_malformed_folder_and_goes_on(tmp_path, capsys):
    data = tmp_path / "candor_turn_taking"
    turn_sample(data, "1", 2.0, [chunk(2.4, 2.8), chunk(2.9, 3.6)])
    turn_sample(data, "2", 2.0, [chunk(2.1, 2.3)])
    write_wav(data / "3" / "input.wav")
    write_json(data / "3" / "turn_taking.json", {"timestamp": [1, 2]})  # an object, not a list
    before = {p: p.stat().st_mtime_ns for p in data.rglob("output.*")}

    out = tmp_path / "scores.json"
    code = main(["eval", "fdb", str(data), "--task", "smooth_turn_taking", "--json", str(out)])
    err = capsys.readouterr().err
    assert code == 1  # one sample could not be scored; the others were
    assert f"{data / '3' / 'turn_taking.json'}: expected a non-empty list" in err
    result = json.loads(out.read_text())
    assert (result["task"], result["samples"]) == ("smooth_turn_taking", 2)
    assert (result["tor"], result["latency_s"]) == (0.5, 0.4)
    assert result["per_sample"]["1"]["tor"] == 1 and result["per_sample"]["2"]["tor"] == 0
    assert list(result["errors"]) == ["3"]
    assert {p: p.stat().st_mtime_ns for p in data.rglob("output.*")} == before  # nothing remade


def test_missing_outputs_refuse_engine_options_their_backend_does_not_take(tmp_path, capsys):
    turn_sample(tmp_path, "1", 2.0)
    args = ["eval", "fdb", str(tmp_path), "--task", "smooth_turn_taking", "--backend", "scripted"]
    assert main([*args, "--model", "tiny"]) == 2
    assert "only --backend moshi takes --model" in capsys.readouterr().err
    assert not (tmp_path / "1" / "output.wav").exists()


def test_a_missing_eval_package_names_the_extra_before_any_work(tmp_path, capsys, monkeypatch):
    turn_sample(tmp_path, "1", 2.0)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    args = ["eval", "fdb", str(tmp_path), "--task", "smooth_turn_taking", "--backend", "scripted"]
    assert main([*args, "--report", str(tmp_path / "report")]) == 2
    assert "matplotlib missing; it comes with the eval extra: pip install 'duplex-assistant[eval]'" in (
        capsys.readouterr().err
    )
    assert not (tmp_path / "1" / "output.wav").exists() and not (tmp_path / "report").exists()


def test_prompts_are_refused_clearly_by_a_model_without_them(tmp_path, capsys):
    turn_sample(tmp_path, "1", 2.0)
    args = ["eval", "fdb", str(tmp_path), "--task", "smooth_turn_taking", "--backend", "scripted"]
    assert main([*args, "--instructions", "Be brief."]) == 2
    assert "this model (builtin-reply) takes no role or voice prompt" in capsys.readouterr().err
    assert not (tmp_path / "1" / "output.wav").exists()  # refused before anything ran
