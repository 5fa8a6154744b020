"""`/api/chat`, the Moshi protocol (docs/moshi-protocol.md): `wire.py` (message kinds) and
`query.py` (the query-string set-up), both pure; `adapter.py`."""
