"""`/api/chat`, the Moshi protocol (docs/moshi-protocol.md): `wire.py` (pure message kinds and
query-string set-up), `adapter.py`."""
