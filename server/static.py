"""Static files of `web/` (or --moshi-ui) for GET requests: content types, no listings, no path
traversal.

`resolve(root, url_path)` is pure path logic (tested directly); server/http.py sends the file it
names (streamed, with caching headers) or 404.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path
from urllib.parse import unquote, urlsplit

WEB_ROOT = Path(__file__).resolve().parents[1] / "web"

# Explicit types for what the page uses; AudioWorklet modules must be served as JavaScript.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".wav": "audio/wav",
    ".wasm": "application/wasm",
    ".txt": "text/plain; charset=utf-8",
    ".map": "application/json",
}


MAX_PATH_CHARS = 1024


def resolve(root: Path, url_path: str) -> Path | None:
    """The file under `root` that `url_path` names, or None (missing, a directory, or outside root)."""
    path = unquote(urlsplit(url_path).path)
    if path in ("", "/"):
        path = "/index.html"
    if "\x00" in path or "\\" in path:
        return None
    parts = [p for p in path.split("/") if p]
    if any(p in (".", "..") or p.startswith(".") for p in parts):
        return None  # no traversal, no dotfiles
    root = root.resolve()
    if len(path) > MAX_PATH_CHARS or any(len(p) > 255 for p in parts):
        return None  # no file of ours is named like that (and the OS would refuse the name)
    try:
        candidate = (root / Path(*parts)).resolve() if parts else root
        candidate.relative_to(root)
        return candidate if candidate.is_file() else None
    except (ValueError, OSError):
        return None  # a symlink pointing out of root, or a name the OS cannot look up


def content_type(path: Path) -> str:
    return (
        CONTENT_TYPES.get(path.suffix.lower())
        or mimetypes.guess_type(path.name)[0]
        or "application/octet-stream"
    )
