"""Pipecat's own pipeline (`Pipeline`, `PipelineTask`, `PipelineRunner`) around a speech-to-speech
service, as its examples build it (the context aggregators on either side, an `LLMRunFrame` to
start), with a file for its microphone and a sink in place of the output transport. Errors count
the `ErrorFrame`s the pipeline carries and what Pipecat logs at ERROR."""

from __future__ import annotations

import asyncio
from importlib.metadata import version

from driver import CHUNK_MS, RATE_HZ, Clock, Report, arguments, timeline
from loguru import logger
from pipecat.frames.frames import (
    EndFrame,
    ErrorFrame,
    InputAudioRawFrame,
    InterimTranscriptionFrame,
    InterruptionFrame,
    LLMRunFrame,
    OutputAudioRawFrame,
    TranscriptionFrame,
    TTSTextFrame,
)
from pipecat.pipeline.pipeline import Pipeline
from pipecat.pipeline.runner import PipelineRunner
from pipecat.pipeline.task import PipelineParams, PipelineTask
from pipecat.processors.aggregators.llm_context import LLMContext
from pipecat.processors.aggregators.llm_response_universal import LLMContextAggregatorPair
from pipecat.processors.frame_processor import FrameDirection, FrameProcessor


class Sink(FrameProcessor):
    """Where the output transport would be: notes what reaches the ear and the eye."""

    def __init__(self, report: Report, clock: Clock):
        super().__init__()
        self.report, self.clock = report, clock

    async def process_frame(self, frame, direction: FrameDirection) -> None:
        await super().process_frame(frame, direction)
        if isinstance(frame, OutputAudioRawFrame):
            self.report.audio(self.clock.now(), len(frame.audio) / (frame.sample_rate * 2 / 1000))
        elif isinstance(frame, InterruptionFrame):
            self.report.interruptions_s.append(self.clock.now())
        elif isinstance(frame, ErrorFrame):
            self.report.errors.append(f"ErrorFrame: {frame.error}")
        elif isinstance(frame, TTSTextFrame):
            self.report.transcript += frame.text
        elif isinstance(frame, TranscriptionFrame):
            self.report.user_transcripts.append(frame.text)
        elif isinstance(frame, InterimTranscriptionFrame):
            self.report.user_transcripts.append(f"(interim) {frame.text}")
        await self.push_frame(frame, direction)


async def converse(framework: str, llm) -> None:
    args = arguments()
    report = Report(framework, version("pipecat-ai"))
    pcm16, report.clips_s = timeline()
    logger.add(lambda m: report.errors.append(f"log: {m.record['message']}"), level="ERROR")
    clock = Clock()
    sink = Sink(report, clock)
    context = LLMContext([{"role": "system", "content": "You are a helpful voice assistant. Be brief."}])
    aggregators = LLMContextAggregatorPair(context)
    task = PipelineTask(
        Pipeline([aggregators.user(), llm, sink, aggregators.assistant()]),
        params=PipelineParams(audio_in_sample_rate=RATE_HZ, audio_out_sample_rate=RATE_HZ),
    )
    await task.queue_frame(LLMRunFrame())

    async def microphone() -> None:
        await asyncio.sleep(1.0)  # the pipeline starts and connects
        report.connected = True
        clock.t0 = clock.t0 + clock.now()
        chunk = RATE_HZ * 2 * CHUNK_MS // 1000
        for n, i in enumerate(range(0, len(pcm16), chunk)):
            await task.queue_frame(
                InputAudioRawFrame(audio=pcm16[i : i + chunk], sample_rate=RATE_HZ, num_channels=1)
            )
            await asyncio.sleep(max(0.0, (n + 1) * CHUNK_MS / 1000 - clock.now()))
        await asyncio.sleep(1.0)
        await task.queue_frame(EndFrame())

    await asyncio.gather(PipelineRunner(handle_sigint=False).run(task), microphone())
    report.write(args.out)
