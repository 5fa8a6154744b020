"""`assistant serve` configuration: the options, their defaults, and the command line that sets them."""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from assistant.auto import banner, choose_backend
from assistant.conversation import ConversationLimits
from assistant.engine_args import add_engine_arguments, engine_kwargs
from audio.vad import VadConfig
from server import static
from server.protocols.schema import MAX_TEMPERATURE

DEFAULT_PORT = 8998
TEST_BACKEND_MAX_SESSIONS = 64


@dataclass
class ServerConfig:
    backend: str = "moshi"
    model: str | None = None
    auto_banner: str | None = None  # --backend auto: what it chose and why, printed at start-up
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_sessions: int | None = None  # None: ask the backend
    start_timeout_s: float = 5.0  # a connection that has not started its session by then is closed
    max_connections_per_client: int = 16  # open websockets per client address; 0: no cap
    auth_token: str | None = None
    allowed_origins: list[str] | None = None  # None: the server's own host:port
    record_dir: str | None = None
    record_min_free_mb: float = 100.0  # sessions start unrecorded while the record dir has less free
    record_required: bool = False  # /readyz says not ready while recordings fail
    ssl_cert: str | None = None
    ssl_key: str | None = None
    barge_in: str = "model"
    instructions: str | None = None  # role prompt of sessions that set none (models that take prompts)
    voice: str | None = None  # voice of sessions that set none
    temperature: float | None = None  # audio sampling of sessions that set none (None: the backend's)
    text_temperature: float | None = None  # text sampling, likewise
    device: str | None = None
    dtype: str | None = None
    engine_options: dict[str, Any] = field(default_factory=dict)
    limits: ConversationLimits = field(default_factory=ConversationLimits)
    vad: VadConfig = field(default_factory=VadConfig)
    web_root: Path = static.WEB_ROOT
    max_outbox_items: int = 64
    codec_threads: int = 2  # worker threads for Opus coding (server/codec_lanes.py)
    max_send_lag_s: float = 2.0  # a client this far behind reading is disconnected (1008)
    messages_per_s: float = 250.0  # per connection, audio and events together
    message_burst: float = 500.0
    flood_close_after: int = 500  # refused messages (beyond a fifth of the rate) before closing (1008)
    drain_timeout_s: float = 5.0  # bound on each close handshake, and on the last sessions' goodbyes
    drain_grace_s: float = 0.0  # after SIGTERM, how long live sessions may go on before server_shutdown
    ping_interval_s: float = 20.0  # websocket keepalive; a peer silent this much longer is closed (1011)
    agent_port: int | None = None  # HAProxy agent check (server/agent.py); None: off
    protect_metrics: bool = False  # /metrics and the figures of /healthz need the auth token
    clock_stats_path: str | None = None  # write frame-clock figures (JSON) here at exit
    captions: str | None = None  # caption model ("auto", a faster-whisper size or dir); None: off
    captions_device: str = "cpu"
    caption_threads: int = 1  # CPU threads of the caption model


def _temperature(flag: str, value: float | None) -> float | None:
    if value is not None and not 0.0 <= value <= MAX_TEMPERATURE:
        raise ValueError(f"{flag} must be between 0 and {MAX_TEMPERATURE:g}, got {value:g}")
    return value


def default_max_sessions(backend: str, device: str | None = None) -> int:
    """How many sessions a backend serves when --max-sessions is not given."""
    if backend == "moshi":
        try:
            from assistant.backends.moshi import MoshiEngine
        except ImportError:
            return 1
        suggest = getattr(MoshiEngine, "suggested_batch_size", None)
        return int(suggest(device)) if callable(suggest) else 1
    return TEST_BACKEND_MAX_SESSIONS


def default_caption_threads(backend: str, device: str | None) -> int:
    """CPU threads for captions when --caption-threads is not given: 1 where the conversation model
    computes on this CPU (the frame clock keeps the other cores), else up to 4, one core fewer than
    this process may use. An utterance is read in about half the time with 2 threads on a quiet CPU
    (tiny.en, 3.4 s of speech, 180 -> 100 ms), but threads that wait on each other collapse when
    they outnumber the free cores: on 2 cores beside other busy processes, 2 threads took 1.0-2.3 s
    after the end of the turn where 1 took 0.2-0.4 s. The core left over is the event loop's."""
    if backend == "moshi":
        if device is None:
            from assistant.moshi.loading import resolve_device

            device = resolve_device(None).type
        if not device.startswith("cuda"):
            return 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(4, cores - 1))


def default_origins(host: str, port: int, tls: bool) -> list[str]:
    """The server's own origin in every loopback spelling, http and https."""
    hosts = {host}
    if host in ("127.0.0.1", "localhost", "0.0.0.0", "::", "::1"):
        hosts |= {"127.0.0.1", "localhost", "[::1]"}
    hosts.discard("0.0.0.0")
    hosts.discard("::")
    schemes = ("https", "http") if tls else ("http", "https")
    return sorted(f"{s}://{h}:{port}" for s in schemes for h in hosts)


def moshi_ui_root(directory: str) -> Path:
    """The --moshi-ui directory, checked: a web client's static build has its index.html at the top."""
    root = Path(directory)
    if not (root / "index.html").is_file():
        raise ValueError(
            f"--moshi-ui {directory} has no index.html; give the unpacked static build of Kyutai's or "
            "PersonaPlex's web client (the dist/ folder of the dist.tgz their servers download)"
        )
    return root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_engine_arguments(parser, backend="auto", auto=True)
    parser.add_argument(
        "--host",
        default=os.environ.get("ASSISTANT_HOST", "127.0.0.1"),
        help="address to listen on (default $ASSISTANT_HOST, else 127.0.0.1)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=os.environ.get("ASSISTANT_PORT", DEFAULT_PORT),
        help=f"port (default $ASSISTANT_PORT, else {DEFAULT_PORT}; 0 = any free)",
    )
    parser.add_argument(
        "--max-sessions",
        type=int,
        default=os.environ.get("ASSISTANT_MAX_SESSIONS"),
        help="concurrent sessions (default $ASSISTANT_MAX_SESSIONS, else what the backend holds)",
    )
    parser.add_argument(
        "--start-timeout",
        type=float,
        default=5.0,
        help="close a connection that has not started its session this many s after the upgrade; "
        "it takes an engine slot only when it starts (default: 5)",
    )
    parser.add_argument(
        "--max-connections-per-client",
        type=int,
        default=os.environ.get("ASSISTANT_MAX_CONNECTIONS_PER_CLIENT", 16),
        help="websockets one client address may hold open at once; more get 1013. Behind a proxy "
        "every client has the proxy's address: set 0 (no cap) there and cap per client in the proxy "
        "(default $ASSISTANT_MAX_CONNECTIONS_PER_CLIENT, else 16)",
    )
    parser.add_argument(
        "--auth-token",
        default=os.environ.get("ASSISTANT_AUTH_TOKEN"),
        help="require this token (Bearer header or ?token=); default $ASSISTANT_AUTH_TOKEN",
    )
    parser.add_argument(
        "--allowed-origins",
        nargs="+",
        default=os.environ.get("ASSISTANT_ALLOWED_ORIGINS", "").split() or None,
        help="browser origins allowed to connect ('*' for any); default the server's own",
    )
    parser.add_argument(
        "--record", metavar="DIR", help="record every session (stereo WAV + JSONL events) in DIR"
    )
    parser.add_argument(
        "--record-min-free-mb",
        type=float,
        default=100.0,
        help="with --record: start a session unrecorded while DIR's disk has less than this many MB "
        "free (default 100; a session records about 0.35 GB an hour)",
    )
    parser.add_argument(
        "--record-required",
        action="store_true",
        help="with --record: /readyz (and the agent) say not ready while recordings fail, so a "
        "balancer sends new sessions elsewhere; by default sessions go on unrecorded and only "
        "/healthz's `recording` says so",
    )
    parser.add_argument(
        "--ssl-cert", default=os.environ.get("ASSISTANT_SSL_CERT"), help="TLS certificate (PEM)"
    )
    parser.add_argument(
        "--ssl-key", default=os.environ.get("ASSISTANT_SSL_KEY"), help="TLS private key (PEM)"
    )
    parser.add_argument(
        "--barge-in",
        choices=("model", "vad"),
        default="model",
        help="model: the model decides whether to stop; vad: force it silent while the user talks"
        " (default: model)",
    )
    parser.add_argument(
        "--instructions",
        default=os.environ.get("ASSISTANT_INSTRUCTIONS"),
        help="role prompt for sessions that set none (PersonaPlex-family models), e.g. 'You are a patient "
        "teacher.'",
    )
    parser.add_argument(
        "--voice",
        default=os.environ.get("ASSISTANT_VOICE"),
        help="voice for sessions that set none: a preset of the model (see GET /v1/voices) or a .wav / .pt file",
    )
    parser.add_argument(
        "--temperature",
        type=float,
        default=None,
        help="audio sampling temperature of sessions that set none (moshi backend; default 0.8); 0 = greedy,"
        " for text too unless --text-temperature is given",
    )
    parser.add_argument(
        "--text-temperature",
        type=float,
        default=None,
        help="text sampling temperature of sessions that set none (default 0.7)",
    )
    parser.add_argument(
        "--vad", choices=("webrtc", "silero"), default="webrtc", help="VAD for turn-taking (default: webrtc)"
    )
    parser.add_argument(
        "--moshi-ui",
        metavar="DIR",
        help="serve this static build of Kyutai's or PersonaPlex's web client at / instead of the "
        "built-in page (it talks to /api/chat; see docs/moshi-protocol.md)",
    )
    parser.add_argument("--script-reply", help="scripted backend: reply WAV (text from the .txt beside it)")
    parser.add_argument(
        "--script-delay-ms",
        type=float,
        default=0.0,
        help="scripted backend: pause before replying (default: 0)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=60.0,
        help="end sessions with no audio for this many s (default: 60)",
    )
    parser.add_argument(
        "--max-session-seconds",
        type=float,
        default=3600.0,
        help="end sessions after this many s (default: 3600)",
    )
    parser.add_argument(
        "--prompt-changes-per-second",
        type=float,
        default=1.0,
        help="how often a session may set a new prompt (instructions or voice), each restarting the "
        "model's context; sooner is refused with rate_limited and the prompt stays (default 1; 0 = "
        "no limit)",
    )
    parser.add_argument(
        "--codec-threads",
        type=int,
        default=2,
        help="worker threads that encode and decode Opus off the event loop (default: 2)",
    )
    parser.add_argument(
        "--max-send-lag",
        type=float,
        default=2.0,
        help="disconnect a client that is this many seconds behind reading (1008) (default: 2)",
    )
    parser.add_argument(
        "--captions",
        metavar="MODEL",
        default="auto",
        help="user captions with faster-whisper: auto (tiny.en on cpu, small on cuda), a size, "
        "a CTranslate2 model dir or Hugging Face repo id, or off (default auto)",
    )
    parser.add_argument(
        "--captions-device",
        choices=("cpu", "cuda"),
        help="device for captions (default: cuda when --device is cuda, else cpu)",
    )
    parser.add_argument(
        "--caption-threads",
        type=int,
        help="CPU threads that read captions (default: 1 when the model computes on the CPU, "
        "else up to 4, one fewer than the cores)",
    )
    parser.add_argument(
        "--drain-seconds",
        type=float,
        default=os.environ.get("ASSISTANT_DRAIN_SECONDS", 0.0),
        help="on SIGTERM, stop taking sessions and let live ones go on for up to this many s before "
        "ending them (server_shutdown); a second signal ends them at once "
        "(default $ASSISTANT_DRAIN_SECONDS, else 0)",
    )
    parser.add_argument(
        "--ping-interval",
        type=float,
        default=20.0,
        help="websocket keepalive: ping every this many s; a peer that has not answered within as "
        "long again is closed (1011 keepalive ping timeout) (default 20)",
    )
    parser.add_argument(
        "--agent-port",
        type=int,
        default=os.environ.get("ASSISTANT_AGENT_PORT"),
        help="answer HAProxy agent checks on this port: ready or drain, and maxconn "
        "(default $ASSISTANT_AGENT_PORT, else off; see docs/deploy.md)",
    )
    parser.add_argument(
        "--protect-metrics",
        action=argparse.BooleanOptionalAction,
        default=os.environ.get("ASSISTANT_PROTECT_METRICS"),
        help="require --auth-token for /metrics and for the figures of /healthz and /readyz (their "
        "status stays open for probes) (default $ASSISTANT_PROTECT_METRICS=1|0, else off)",
    )
    parser.add_argument(
        "--clock-stats",
        metavar="FILE",
        help="at exit, write frame-clock figures (tick lateness, step time, skipped ticks, the moves "
        "it made to a lone session's phase) as JSON to FILE",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log every connection")


def _switch(value: bool | str | None, env_name: str) -> bool:
    """A --flag/--no-flag value, or its environment default ("1" or "0")."""
    if value is None or isinstance(value, bool):
        return bool(value)
    if value.strip() not in ("0", "1"):
        raise ValueError(f"{env_name} must be 0 or 1, got {value!r}")
    return value.strip() == "1"


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    if args.codec_threads < 1:
        raise ValueError(f"--codec-threads must be >= 1, got {args.codec_threads}")
    if args.caption_threads is not None and args.caption_threads < 1:
        raise ValueError(f"--caption-threads must be >= 1, got {args.caption_threads}")
    if args.max_sessions is not None and args.max_sessions < 1:
        raise ValueError(f"--max-sessions must be >= 1, got {args.max_sessions}")
    if args.max_connections_per_client < 0:
        raise ValueError(f"--max-connections-per-client must be >= 0, got {args.max_connections_per_client}")
    for name in ("start_timeout", "idle_timeout", "max_session_seconds", "max_send_lag", "ping_interval"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(args, name)}")
    if args.record_min_free_mb < 0:
        raise ValueError(f"--record-min-free-mb must be >= 0, got {args.record_min_free_mb}")
    if args.record_required and not args.record:
        raise ValueError("--record-required needs --record DIR")
    if args.prompt_changes_per_second < 0:
        raise ValueError(f"--prompt-changes-per-second must be >= 0, got {args.prompt_changes_per_second}")
    if args.drain_seconds < 0:
        raise ValueError(f"--drain-seconds must be >= 0, got {args.drain_seconds}")
    protect_metrics = _switch(args.protect_metrics, "ASSISTANT_PROTECT_METRICS")
    if protect_metrics and not args.auth_token:
        raise ValueError(
            "--protect-metrics needs --auth-token (or ASSISTANT_AUTH_TOKEN): the token protects them"
        )
    if bool(args.ssl_cert) != bool(args.ssl_key):
        raise ValueError("--ssl-cert and --ssl-key go together; give both (or neither)")
    for name in ("ssl_cert", "ssl_key"):
        path = getattr(args, name)
        if path and not Path(path).is_file():
            raise ValueError(f"--{name.replace('_', '-')} {path} does not exist")
    web_root = static.WEB_ROOT if args.moshi_ui is None else moshi_ui_root(args.moshi_ui)
    captions = None if args.captions in (None, "off", "none") else args.captions
    vad = VadConfig(backend=args.vad)
    backend, auto_banner = args.backend, None
    if backend == "auto":
        choice = choose_backend(args.model or os.environ.get("ASSISTANT_MODEL"))
        backend, auto_banner = choice.backend, banner(choice)
        args = argparse.Namespace(**{**vars(args), "backend": backend, "model": choice.model})
    # Under auto, options for the backend it did not pick are left unused rather than refused.
    explicit = auto_banner is None
    engine = engine_kwargs(args) if explicit or backend == "moshi" else {}
    engine_options: dict[str, Any] = {}
    if backend == "scripted":
        engine_options = {
            "script_reply": args.script_reply,
            "script_delay_ms": args.script_delay_ms,
            "vad": vad,
        }
    elif args.script_reply is not None and explicit:
        raise ValueError("--script-reply only applies to --backend scripted")
    if backend == "moshi":
        engine_options = {name: engine[name] for name in ("compile", "quantize", "context_policy")}
    return ServerConfig(
        backend=backend,
        model=engine.get("model"),
        auto_banner=auto_banner,
        host=args.host,
        port=args.port,
        max_sessions=args.max_sessions,
        start_timeout_s=args.start_timeout,
        max_connections_per_client=args.max_connections_per_client,
        auth_token=args.auth_token or None,
        allowed_origins=args.allowed_origins,
        record_dir=args.record,
        record_min_free_mb=args.record_min_free_mb,
        record_required=args.record_required,
        ssl_cert=args.ssl_cert,
        ssl_key=args.ssl_key,
        barge_in=args.barge_in,
        instructions=args.instructions or None,
        voice=args.voice or None,
        temperature=_temperature("--temperature", args.temperature),
        text_temperature=_temperature(
            "--text-temperature",
            0.0 if args.text_temperature is None and args.temperature == 0 else args.text_temperature,
        ),
        device=args.device,
        dtype=engine.get("dtype"),
        engine_options=engine_options,
        limits=ConversationLimits(
            idle_timeout_s=args.idle_timeout,
            max_session_s=args.max_session_seconds,
            prompt_changes_per_s=args.prompt_changes_per_second or None,
        ),
        vad=vad,
        web_root=web_root,
        max_send_lag_s=args.max_send_lag,
        codec_threads=args.codec_threads,
        clock_stats_path=args.clock_stats,
        drain_grace_s=args.drain_seconds,
        ping_interval_s=args.ping_interval,
        agent_port=args.agent_port,
        protect_metrics=protect_metrics,
        captions=captions,
        captions_device=args.captions_device or ("cuda" if (args.device or "").startswith("cuda") else "cpu"),
        caption_threads=args.caption_threads
        or (default_caption_threads(backend, args.device) if captions else 1),
    )
