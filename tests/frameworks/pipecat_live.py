"""Pipecat's `OpenAILiveLLMService` (OpenAI Live, full duplex) in a pipeline against
/v1/live/sessions (see pipecat_session.py).

    .venv-pipecat/bin/python tests/frameworks/pipecat_live.py --url ws://HOST:PORT --out r.json
"""

from __future__ import annotations

import asyncio

from driver import TOKEN, arguments
from pipecat.services.openai.live.llm import OpenAILiveLLMService
from pipecat_session import converse

if __name__ == "__main__":
    url = arguments().url + "/v1/live/sessions"
    asyncio.run(converse("pipecat OpenAILiveLLMService", OpenAILiveLLMService(api_key=TOKEN, base_url=url)))
