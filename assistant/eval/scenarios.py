"""The project's own duplex scenarios, spoken by espeak-ng and cut by sox, in FDB's folder layout.

Five kinds, each a behaviour a duplex assistant must get right, each scored by the FDB task it
maps to (KINDS):

- pause: the user stops mid-sentence, then goes on; the assistant should not take the floor.
- turn: the user asks a question and stops; the assistant should answer, soon.
- backchannel: while the assistant answers, the user says "uh huh"; it should keep talking.
- interrupt: the user cuts in at several offsets into the answer; it should stop, then answer.
- background: another speaker talks over the answer at several loudnesses; it should not stop.

Times in each task file come from the clips' own lengths after sox trims their silence, so they
are exact. `build` makes only the folders that are missing (or were made from another spec), so
the set is cached between runs. The default set (2 per kind) is small enough for CI; `full=True`
makes 6 per kind, the default ones first.

    python -m assistant.eval.scenarios DIR [--full]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

RATE_HZ = 16_000  # FDB's inputs are 16 kHz (some 48 kHz); 16 kHz is what its VAD and ASR use
USER_VOICE = "en-us"
OTHER_VOICE = "en-gb+f3"  # a second, clearly different voice
WORDS_PER_MINUTE = 165
LEAD_S = 0.5  # silence before the user's first word
SPEC_FILE = "scenario.json"
SPEC_VERSION = 1
DEFAULT_PER_KIND = 2

KINDS = {
    "pause": "pause_handling",
    "turn": "smooth_turn_taking",
    "backchannel": "user_backchannel",
    "interrupt": "user_interruption",
    "background": "background_speech",
}

QUESTIONS = (
    "What is the weather like in Paris today?",
    "Can you tell me a short story about a dog?",
    "How do I make a good cup of green tea?",
    "What time does the museum open tomorrow?",
    "Which planet is the largest in our solar system?",
    "Could you recommend a good book to read?",
)
# kind -> one dict of parameters per scenario, the default set first.
SPECS: dict[str, list[dict]] = {
    "pause": [
        {"first": "I was thinking that we could", "rest": "go to the beach on Saturday.", "pause_s": 1.0},
        {"first": "My favourite kind of music is", "rest": "jazz from the fifties.", "pause_s": 2.5},
        {"first": "Tomorrow I need to", "rest": "buy some bread and milk.", "pause_s": 0.6},
        {"first": "The best place to visit is", "rest": "the old town by the river.", "pause_s": 1.5},
        {"first": "What I really want to know is", "rest": "how the engine works.", "pause_s": 2.0},
        {"first": "I think the answer might be", "rest": "somewhere in the second chapter.", "pause_s": 3.0},
    ],
    "turn": [{"question": q, "tail_s": 4.0} for q in QUESTIONS],
    "backchannel": [
        {"question": QUESTIONS[0], "word": "uh huh", "after_s": 1.5},
        {"question": QUESTIONS[1], "word": "yeah", "after_s": 2.5},
        {"question": QUESTIONS[2], "word": "right", "after_s": 1.0},
        {"question": QUESTIONS[3], "word": "okay", "after_s": 2.0},
        {"question": QUESTIONS[4], "word": "mm hmm", "after_s": 3.0},
        {"question": QUESTIONS[5], "word": "I see", "after_s": 1.5},
    ],
    "interrupt": [
        {"question": QUESTIONS[0], "interrupt": "Wait, tell me about Rome instead.", "after_s": 1.5},
        {"question": QUESTIONS[1], "interrupt": "Sorry, stop, make it about a cat.", "after_s": 3.0},
        {"question": QUESTIONS[2], "interrupt": "Hold on, what about black tea?", "after_s": 1.0},
        {"question": QUESTIONS[3], "interrupt": "No, I meant the one in London.", "after_s": 2.0},
        {"question": QUESTIONS[4], "interrupt": "Actually, which one is the smallest?", "after_s": 2.5},
        {"question": QUESTIONS[5], "interrupt": "Stop, something short please.", "after_s": 4.0},
    ],
    "background": [
        {
            "question": QUESTIONS[0],
            "other": "The train to Manchester leaves from platform four.",
            "level_db": -6,
        },
        {"question": QUESTIONS[1], "other": "Did anyone see where I left my keys?", "level_db": -24},
        {"question": QUESTIONS[2], "other": "We should paint the kitchen a brighter colour.", "level_db": 0},
        {"question": QUESTIONS[3], "other": "The meeting has moved to half past three.", "level_db": -12},
        {"question": QUESTIONS[4], "other": "Could you pass me the salt, please?", "level_db": -18},
        {"question": QUESTIONS[5], "other": "It looks like it is going to rain later.", "level_db": -30},
    ],
}


def check_tools() -> None:
    """Raise RuntimeError saying what to install when espeak-ng or sox is missing."""
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(
            f"the scenario set is spoken by espeak-ng and cut by sox; {' and '.join(missing)} not found "
            "(apt install espeak-ng sox)"
        )


def say(text: str, workdir: Path, voice: str = USER_VOICE, gain_db: float = 0.0) -> np.ndarray:
    """Speak `text`: float32 (n,) at 16 kHz, silence trimmed both ends, peak at -3 dBFS + gain_db."""
    import soundfile as sf

    raw, clean = workdir / "raw.wav", workdir / "clean.wav"
    subprocess.run(
        ["espeak-ng", "-v", voice, "-s", str(WORDS_PER_MINUTE), "-w", str(raw), text],
        check=True,
        capture_output=True,
    )
    trim = ["silence", "1", "0.02", "0.5%"]  # drop leading audio quieter than 0.5% for 20 ms
    subprocess.run(
        [
            "sox",
            str(raw),
            "-r",
            str(RATE_HZ),
            "-c",
            "1",
            "-b",
            "16",
            str(clean),
            *trim,
            "reverse",
            *trim,
            "reverse",
        ]
        + ["norm", "-3", "gain", str(gain_db)],
        check=True,
        capture_output=True,
    )
    pcm, _ = sf.read(str(clean), dtype="float32")
    return pcm


def _silence(seconds: float) -> np.ndarray:
    return np.zeros(round(seconds * RATE_HZ), dtype=np.float32)


def _seconds(pcm: np.ndarray) -> float:
    return round(pcm.shape[0] / RATE_HZ, 3)


def _pause(spec: dict, workdir: Path) -> tuple[np.ndarray, dict]:
    first, rest = say(spec["first"], workdir), say(spec["rest"], workdir)
    pause_start = LEAD_S + _seconds(first)
    audio = np.concatenate([_silence(LEAD_S), first, _silence(spec["pause_s"]), rest, _silence(0.3)])
    return audio, {
        "pause.json": [{"text": "[PAUSE]", "timestamp": [pause_start, pause_start + spec["pause_s"]]}]
    }


def _turn(spec: dict, workdir: Path) -> tuple[np.ndarray, dict]:
    question = say(spec["question"], workdir)
    end = LEAD_S + _seconds(question)
    audio = np.concatenate([_silence(LEAD_S), question, _silence(spec["tail_s"])])
    return audio, {"turn_taking.json": [{"text": "[TURN-TAKING]", "timestamp": [end, _seconds(audio)]}]}


def _after_question(
    spec: dict, event: np.ndarray, tail_s: float, workdir: Path
) -> tuple[np.ndarray, float, float]:
    """The question, then `event` spoken after_s seconds after it ends: (audio, event start, event end)."""
    question = say(spec["question"], workdir)
    start = LEAD_S + _seconds(question) + spec["after_s"]
    audio = np.concatenate([_silence(LEAD_S), question, _silence(spec["after_s"]), event, _silence(tail_s)])
    return audio, round(start, 3), round(start + _seconds(event), 3)


def _backchannel(spec: dict, workdir: Path) -> tuple[np.ndarray, dict]:
    audio, start, end = _after_question(spec, say(spec["word"], workdir, gain_db=-4.0), 2.0, workdir)
    metadata = {
        "context_text": spec["question"],
        "current_turn_text": spec["word"],
        "timestamps": [start, end],
    }
    return audio, {"metadata.json": metadata}


def _interrupt(spec: dict, workdir: Path) -> tuple[np.ndarray, dict]:
    interruption = say(spec["interrupt"], workdir)
    audio, start, end = _after_question(spec, interruption, 3.0, workdir)
    files = {
        "interrupt.json": [
            {"context": spec["question"], "interrupt": spec["interrupt"], "timestamp": [start, end]}
        ],
        "context.wav": audio[: round(start * RATE_HZ)],
        "interrupt.wav": interruption,
    }
    return audio, files


def _background(spec: dict, workdir: Path) -> tuple[np.ndarray, dict]:
    other = say(spec["other"], workdir, voice=OTHER_VOICE, gain_db=spec["level_db"])
    audio, start, end = _after_question({**spec, "after_s": 1.5}, other, 2.0, workdir)
    metadata = {
        "context_text": spec["question"],
        "current_turn_text": spec["other"],
        "timestamps": [start, end],
    }
    return audio, {"metadata.json": metadata}


_BUILDERS = {
    "pause": _pause,
    "turn": _turn,
    "backchannel": _backchannel,
    "interrupt": _interrupt,
    "background": _background,
}


def _write(folder: Path, audio: np.ndarray, files: dict, spec: dict) -> None:
    import soundfile as sf

    folder.mkdir(parents=True)
    sf.write(str(folder / "input.wav"), audio, RATE_HZ, subtype="PCM_16")
    for name, content in files.items():
        if name.endswith(".wav"):
            sf.write(str(folder / name), content, RATE_HZ, subtype="PCM_16")
        else:
            (folder / name).write_text(json.dumps(content, indent=1) + "\n", encoding="utf-8")
    (folder / SPEC_FILE).write_text(json.dumps(spec, indent=1) + "\n", encoding="utf-8")


def _spec_of(folder: Path) -> dict | None:
    try:
        return json.loads((folder / SPEC_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _planned(root: Path, kinds: Sequence[str], full: bool) -> list[tuple[str, Path, dict, dict]]:
    """(kind, folder, parameters, spec) of every scenario asked for, in order."""
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown scenario kind(s) {unknown}; choose from {', '.join(KINDS)}")
    return [
        (kind, root / kind / str(index), params, {"version": SPEC_VERSION, "kind": kind, **params})
        for kind in kinds
        for index, params in enumerate(SPECS[kind] if full else SPECS[kind][:DEFAULT_PER_KIND])
    ]


def count(root: Path, kinds: Sequence[str] = tuple(KINDS), full: bool = False) -> tuple[int, int]:
    """(scenarios asked for, how many of them `build` would make), for a progress bar."""
    planned = _planned(root, kinds, full)
    return len(planned), sum(_spec_of(folder) != spec for _, folder, _, spec in planned)


def build(
    root: Path,
    kinds: Sequence[str] = tuple(KINDS),
    full: bool = False,
    on_made: Callable[[], None] | None = None,
) -> dict[str, list[Path]]:
    """Make the scenario folders `root/{kind}/{ID}/` that are missing; returns them per kind, in order.

    A folder is made in a temporary place and moved in whole, so an interrupted build leaves none half
    made; one made from other parameters (an older version of this file) is made again. on_made:
    called after each folder made.
    """
    folders: dict[str, list[Path]] = {kind: [] for kind in kinds}
    for kind, folder, params, spec in _planned(root, kinds, full):
        if _spec_of(folder) != spec:
            check_tools()
            _make(folder, kind, params, spec)
            if on_made is not None:
                on_made()
        folders[kind].append(folder)
    return folders


def _make(folder: Path, kind: str, params: dict, spec: dict) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".building-") as tmp:
        workdir = Path(tmp)
        audio, files = _BUILDERS[kind](params, workdir)
        staged = workdir / "sample"
        _write(staged, audio, files, spec)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(staged, folder)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m assistant.eval.scenarios", description=__doc__.split("\n")[0]
    )
    parser.add_argument("root", type=Path, help="where the scenario folders go")
    parser.add_argument(
        "--full", action="store_true", help=f"{len(SPECS['pause'])} per kind, not {DEFAULT_PER_KIND}"
    )
    args = parser.parse_args(argv)
    for kind, folders in build(args.root, full=args.full).items():
        print(f"{kind}: {len(folders)} in {args.root / kind}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
