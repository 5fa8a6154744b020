"""The prompt half of a Realtime `session.update`: `instructions` and `audio.output.voice`.

With a PersonaPlex-family model both are applied (the model then starts over with the new
prompt); an unknown voice, such as an OpenAI voice name, keeps the current one with a warning.
Other models speak in their one voice and take no text prompt: both are reported as ignored.
"""

from __future__ import annotations

from collections.abc import Callable

from server.protocols.realtime.client_events import RealtimeError, SessionUpdate, warning


def prompt_update(
    current: tuple[str, str],
    ev: SessionUpdate,
    warnings: list,
    *,
    takes_prompts: bool,
    check_prompt: Callable[[str | None, str | None], None],
    model: str,
    heard_audio: bool,
) -> tuple[str, str] | None:
    """The (instructions, voice) the update asks for, or None when the prompt stays as it is.

    Warnings are appended to `warnings`. Raises RealtimeError, before anything changes, for a
    prompt the engine refuses (check_prompt raises ValueError for it)."""
    asked_instructions, asked_voice = ev.session.instructions, ev.session.audio.output.voice
    instructions, voice = current
    if asked_instructions is not None:
        if takes_prompts:
            instructions = asked_instructions
        elif asked_instructions:
            warnings.append(
                warning(
                    "session.instructions",
                    f"this model ({model}) takes no text prompt; instructions need a "
                    "PersonaPlex-family checkpoint; ignored",
                )
            )
    if asked_voice is not None and asked_voice != current[1]:
        if not takes_prompts:
            warnings.append(
                warning(
                    "session.audio.output.voice", f"the voice is fixed by the model ({current[1]}); ignored"
                )
            )
        else:
            try:
                check_prompt(None, asked_voice)
                voice = asked_voice
            except ValueError as exc:  # e.g. an OpenAI voice name: keep talking in the current one
                warnings.append(warning("session.audio.output.voice", f"{exc}; keeping {current[1]}"))
    if (instructions, voice) == current:
        return None
    try:
        check_prompt(instructions or None, voice)
    except ValueError as exc:
        raise RealtimeError("invalid_value", str(exc), "session.instructions", ev.event_id) from None
    if heard_audio:
        warnings.append(
            warning(
                "session.instructions",
                "the model starts over with the new prompt: what it heard before is forgotten",
            )
        )
    return instructions, voice
