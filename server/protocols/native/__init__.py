"""`/ws`, the native protocol (docs/protocol.md): `client_events.py` (client events) and
`wire.py` (decode and encode), both pure; `adapter.py`."""
