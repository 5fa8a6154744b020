"""The OpenAI Agents SDK (`agents.realtime`: RealtimeAgent, RealtimeRunner) against /v1/realtime,
as its own examples use it, with the server's address in place of OpenAI's (see driver.py).

    .venv-agents/bin/python tests/frameworks/agents_sdk.py --url ws://HOST:PORT --out r.json
"""

from __future__ import annotations

import asyncio
from importlib.metadata import version

from agents.realtime import RealtimeAgent, RealtimeRunner
from driver import TOKEN, Clock, Report, arguments, stream, timeline


async def main() -> None:
    args = arguments()
    report = Report("openai-agents", version("openai-agents"))
    pcm16, report.clips_s = timeline()
    agent = RealtimeAgent(name="Assistant", instructions="You are a helpful voice assistant. Be brief.")
    runner = RealtimeRunner(
        starting_agent=agent,
        config={
            "model_settings": {
                "model_name": "gpt-realtime",
                "voice": "ash",
                "modalities": ["audio"],
                "input_audio_format": "pcm16",
                "output_audio_format": "pcm16",
                "input_audio_transcription": {"model": "gpt-4o-mini-transcribe"},
                "turn_detection": {"type": "semantic_vad", "interrupt_response": True},
            }
        },
    )
    session = await runner.run(
        model_config={"url": f"{args.url}/v1/realtime?model=gpt-realtime", "api_key": TOKEN}
    )
    clock = Clock()
    async with session:
        report.connected = True

        async def listen() -> None:
            async for event in session:
                if event.type == "audio":
                    report.audio(clock.now(), len(event.audio.data) / 48)
                elif event.type == "audio_interrupted":
                    report.interruptions_s.append(clock.now())
                elif event.type == "error":
                    report.errors.append(repr(event.error))
                elif event.type == "raw_model_event":
                    data = event.data
                    if data.type == "transcript_delta":
                        report.transcript += data.delta
                    elif data.type == "input_audio_transcription_completed":
                        report.user_transcripts.append(data.transcript)

        listener = asyncio.create_task(listen())
        await stream(pcm16, session.send_audio, clock)
        await asyncio.sleep(1.0)
        listener.cancel()
    report.write(args.out)


if __name__ == "__main__":
    asyncio.run(main())
