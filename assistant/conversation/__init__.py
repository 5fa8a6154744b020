"""The conversation core: turn-taking, barge-in, assistant stretches, latency and captions hand-off,
as pure code that every path (server adapters, `talk --local`, `respond`) drives the same way."""

from assistant.conversation.core import Conversation, SlotControl, TurnLatency
from assistant.conversation.events import (
    AssistantSpeechStarted,
    AssistantSpeechStopped,
    AssistantText,
    AudioOut,
    BargeIn,
    Error,
    Event,
    InputSpeechStarted,
    InputSpeechStopped,
    PlaybackClear,
    SessionEnded,
    SessionReady,
    SessionUpdated,
    Stats,
    UserTranscript,
    UserTranscriptDelta,
)
from assistant.conversation.options import (
    BARGE_IN_POLICIES,
    SUPPORTED_SAMPLE_RATES,
    ConversationLimits,
    ConversationOptions,
)

__all__ = [
    "BARGE_IN_POLICIES",
    "SUPPORTED_SAMPLE_RATES",
    "AssistantSpeechStarted",
    "AssistantSpeechStopped",
    "AssistantText",
    "AudioOut",
    "BargeIn",
    "Conversation",
    "ConversationLimits",
    "ConversationOptions",
    "Error",
    "Event",
    "InputSpeechStarted",
    "InputSpeechStopped",
    "PlaybackClear",
    "SessionEnded",
    "SessionReady",
    "SessionUpdated",
    "SlotControl",
    "Stats",
    "TurnLatency",
    "UserTranscript",
    "UserTranscriptDelta",
]
