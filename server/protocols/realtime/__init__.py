"""`/v1/realtime`, the OpenAI Realtime API (docs/realtime.md): `client_events.py` (client events),
`state_machine.py` (responses and items), `records.py`, `prompt.py`, all pure; `adapter.py`."""
