"""`assistant eval`: turn-taking scores compatible with Full-Duplex-Bench (FDB) v1.

A run has three stages per sample folder, each skipped when its file already exists, so a run
resumes where it stopped and another system's outputs can be scored as they are:

1. `output.wav`, the assistant's side, time-synchronous with `input.wav` (`generate.py`, or a
   live server through `client/eval_live.py`);
2. `output.json`, its words with times in FDB's format (`asr.py`, faster-whisper);
3. scores with FDB's definitions (`score.py`, on speech segments from `segments.py`), written
   as JSON (`results.py`) and an HTML report with timeline plots (`report.py`).

`dataset.py` reads FDB's folder layout; `scenarios.py` builds the project's own scenario set
in that layout; `pipeline.py` runs the stages. The command line is `client/eval.py`, because
scoring a live server needs the native protocol client and `assistant` may not import `client`.
"""
