"""The server's websocket protocols, one folder each: `native` (/ws), `realtime` (/v1/realtime),
`live` (/v1/live/sessions), `moshi` (/api/chat). In each, `adapter.py` moves data between the
socket (server/connection.py) and the pure modules beside it, which parse, validate and encode
the protocol without sockets, clocks or threads. Shared by all: `limits.py` (message size, close
codes, rate limiter) and `json_frames.py` (the one JSON decoding of a text frame).
"""
