"""Benchmarks: `assistant bench NAME` runs `bench/NAME.py`, which defines `add_arguments` and `run`.

They print figures and never fail on speed. They read the test speech of a checkout
(tests/data/speech), so they run from a checkout and are not part of the wheel. Beside them:
`room.py` (the simulated room of `bench echo` and the echo tests), `traffic.py` (the hostile
traffic of `bench reliability`), `loopback.py`, `probes.py` and `idle_holders.py` (its server under
test, healthy client and probes), and `gpu.sh` with its driver `gpu.py` (every GPU figure of
docs/performance.md in one run).
"""
