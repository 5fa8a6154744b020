"""Benchmarks: `assistant bench NAME` runs `bench/NAME.py`, which defines `add_arguments` and `run`.

They print figures and never fail on speed. They read the test speech of a checkout
(tests/data/speech), so they run from a checkout and are not part of the wheel. Beside them:
`room.py` (the simulated room of `bench echo` and the echo tests), `traffic.py` (the hostile
traffic of `bench reliability`), and `gpu.sh` with its driver `gpu.py` (every GPU figure of
docs/performance.md in one run).
"""
