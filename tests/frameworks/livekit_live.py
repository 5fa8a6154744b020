"""LiveKit Agents' `livekit.plugins.openai.realtime.GPTLiveModel` (OpenAI Live, full duplex), with its
default settings (Responses delegation), in an AgentSession against /v1/live/sessions (see
livekit_session.py).

    .venv-livekit/bin/python tests/frameworks/livekit_live.py --url ws://HOST:PORT --out r.json
"""

from __future__ import annotations

import asyncio

from driver import TOKEN, arguments
from livekit.plugins.openai.realtime import GPTLiveModel
from livekit_session import converse

if __name__ == "__main__":
    base = arguments().url.replace("ws://", "http://") + "/v1"
    asyncio.run(
        converse(
            "livekit-agents GPTLiveModel", GPTLiveModel(base_url=base, api_key=TOKEN), "/v1/live/sessions"
        )
    )
