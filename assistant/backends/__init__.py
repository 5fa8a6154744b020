"""Engine backends and the factory that builds one by name.

`moshi` is the real speech LM; `scripted` and `silence` need no weights and exist so the server,
clients and timing can be tested without a GPU.
"""

from __future__ import annotations

from assistant.engine import Engine

BACKENDS = ("moshi", "scripted", "silence")


def build_engine(
    backend: str,
    *,
    model: str | None = None,
    batch_size: int = 1,
    device: str | None = None,
    dtype: str | None = None,
    **options,
) -> Engine:
    """Build the engine named `backend` with `batch_size` slots.

    `model`, `device` and `dtype` only matter to `moshi`; `options` are backend specific
    (scripted: `script_reply`, `script_delay_ms`, `vad`).
    """
    if backend == "silence":
        from assistant.backends.silence import SilenceEngine

        if options:
            raise ValueError(f"the silence backend takes no options, got {sorted(options)}")
        return SilenceEngine(batch_size)
    if backend == "scripted":
        from assistant.backends.scripted import ScriptedEngine

        return ScriptedEngine(batch_size, **options)
    if backend == "moshi":
        # Imported lazily: it pulls in torch and transformers, which the test backends never need.
        from assistant.backends.moshi import MoshiEngine

        return MoshiEngine.from_pretrained(
            model, batch_size=batch_size, device=device, dtype=dtype, **options
        )
    raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
