"""Pipecat's `OpenAIRealtimeLLMService` (OpenAI Realtime) in a pipeline against /v1/realtime (see
pipecat_session.py).

    .venv-pipecat/bin/python tests/frameworks/pipecat_realtime.py --url ws://HOST:PORT --out r.json
"""

from __future__ import annotations

import asyncio

from driver import TOKEN, arguments
from pipecat.services.openai.realtime.llm import OpenAIRealtimeLLMService
from pipecat_session import converse

if __name__ == "__main__":
    url = arguments().url + "/v1/realtime"
    asyncio.run(
        converse("pipecat OpenAIRealtimeLLMService", OpenAIRealtimeLLMService(api_key=TOKEN, base_url=url))
    )
