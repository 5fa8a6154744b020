"""`/v1/live/sessions`, the OpenAI Live API (docs/live.md): `client_events.py` (client events),
`state_machine.py` (the session), both pure; `adapter.py`."""
