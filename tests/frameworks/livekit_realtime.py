"""LiveKit Agents' `livekit.plugins.openai.realtime.RealtimeModel` (OpenAI Realtime) in an
AgentSession against /v1/realtime (see livekit_session.py).

    .venv-livekit/bin/python tests/frameworks/livekit_realtime.py --url ws://HOST:PORT --out r.json
"""

from __future__ import annotations

import asyncio

from driver import TOKEN, arguments
from livekit.plugins.openai.realtime import RealtimeModel
from livekit_session import converse

if __name__ == "__main__":
    base = arguments().url.replace("ws://", "http://") + "/v1"
    asyncio.run(
        converse("livekit-agents RealtimeModel", RealtimeModel(base_url=base, api_key=TOKEN), "/v1/realtime")
    )
