"""`/ws`, the native protocol (docs/protocol.md): `wire.py` (pure encode/decode), `adapter.py`."""
