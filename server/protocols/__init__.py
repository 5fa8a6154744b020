"""The server's websocket protocols, one folder each: `native` (/ws), `realtime` (/v1/realtime),
`live` (/v1/live/sessions), `moshi` (/api/chat). In each, `adapter.py` moves data between the
socket (server/connection.py) and the pure modules beside it, which parse, validate and encode
the protocol without sockets, clocks or threads; each protocol's client events are typed schemas
(`client_events.py`; Moshi's `query.py`). Shared by all: `limits.py` (message size, close codes,
rate limiter), `json_frames.py` (the one JSON decoding of a text frame) and `schema.py` (the
constrained types of the schemas and the one mapping of a refused value to a protocol's error);
by the two OpenAI APIs, `openai_events.py` (their event envelope and error).
"""
