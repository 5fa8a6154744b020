// What the page tells a person when a conversation cannot start or ends badly: each error says
// what happened and what to do about it, and a failed websocket handshake is diagnosed over HTTP.

/** An error a person can act on: what happened, and what to do about it. */
export class UserError extends Error {
  constructor(code, message, action) {
    super(message);
    this.code = code;
    this.action = action;
  }
}

export const ERRORS = {
  insecure: () =>
    new UserError(
      "insecure",
      "This page cannot use the microphone over an insecure connection.",
      "Open it at http://localhost:8998 on the machine running the server, or serve it over https (--ssl-cert/--ssl-key).",
    ),
  unsupported: () =>
    new UserError(
      "unsupported",
      "This browser does not support AudioWorklet, which the page needs for live audio.",
      "Use a current version of Chrome, Edge, Firefox or Safari.",
    ),
  micDenied: () =>
    new UserError(
      "mic_denied",
      "Microphone access was denied.",
      "Allow the microphone for this page (the icon at the left of the address bar), then press Start again.",
    ),
  micMissing: () =>
    new UserError("mic_missing", "No microphone was found.", "Connect a microphone, then press Start again."),
  micBusy: () =>
    new UserError(
      "mic_busy",
      "The microphone could not be opened; another application may be using it.",
      "Close other apps that use the microphone, then press Start again.",
    ),
  audioFailed: (err) =>
    new UserError(
      "audio_failed",
      `Audio could not be started (${err?.message || err}).`,
      "Reload the page and press Start again; if it keeps failing, try another browser.",
    ),
  unreachable: (host) =>
    new UserError(
      "unreachable",
      `The assistant server at ${host} cannot be reached.`,
      "Check that `assistant serve` is running and that this computer can reach it, then press Start again.",
    ),
  auth: (hadToken) =>
    new UserError(
      "auth",
      hadToken ? "The server refused the access token." : "This server needs an access token.",
      "Enter the server's token under Settings (or open the page with ?token=…), then press Start again.",
    ),
  origin: (origin) =>
    new UserError(
      "origin",
      `The server does not accept connections from this page's address (${origin}).`,
      "Open the page from the server's own address, or add it to the server's --allowed-origins.",
    ),
  refused: () =>
    new UserError(
      "refused",
      "The server refused the connection.",
      "Check the server's log for the reason, then press Start again.",
    ),
  full: (reason) =>
    new UserError(
      "full",
      `The server is full right now${reason ? ` (${reason})` : ""}.`,
      "Every conversation slot is taken. Wait a minute, then press Start again.",
    ),
  lost: () =>
    new UserError(
      "lost",
      "The connection to the server was lost.",
      "The server may have stopped or the network dropped. Press Start to reconnect once it is back.",
    ),
  serverStopped: () =>
    new UserError("server_stopped", "The server shut down.", "Press Start to reconnect once it is running again."),
  ended: (reason) =>
    new UserError("ended", `The conversation ended (${reason}).`, "Press Start to begin a new one."),
  serverError: (reason) =>
    new UserError(
      "server_error",
      `The server hit an internal error${reason ? ` (${reason})` : ""}.`,
      "Press Start to try again; if it repeats, the server's log says why.",
    ),
  policy: (reason) =>
    new UserError(
      "policy",
      `The server ended the connection${reason ? `: ${reason}` : ""}.`,
      "This happens when the connection is too slow or the page sent too much at once. Press Start to reconnect.",
    ),
  closed: (code, reason) =>
    new UserError(
      "closed",
      `The server closed the conversation (code ${code}${reason ? `: ${reason}` : ""}).`,
      "Press Start to begin a new one.",
    ),
  refusedStart: (message) =>
    new UserError("session_refused", `The server refused to start the conversation: ${message}`, "Press Start to try again."),
};

/** Map a getUserMedia failure to words. */
export function microphoneError(err) {
  switch (err?.name) {
    case "NotAllowedError":
    case "SecurityError":
      return ERRORS.micDenied();
    case "NotFoundError":
    case "OverconstrainedError":
      return ERRORS.micMissing();
    default:
      return ERRORS.micBusy();
  }
}

/**
 * Why did the websocket handshake fail? Browsers hide the HTTP status (the socket just closes
 * with 1006), so ask over plain HTTP: no answer from /healthz means unreachable; otherwise a
 * GET of the same /ws URL goes through the same auth and origin checks and returns their
 * status (401 or 403) before the server notices it is not an upgrade.
 */
export async function serverReachable() {
  try {
    await fetch("/healthz", { cache: "no-store" });
    return true;
  } catch {
    return false;
  }
}

export async function diagnoseHandshakeFailure(wsPath, host) {
  if (!(await serverReachable())) return ERRORS.unreachable(host);
  try {
    const probe = await fetch(wsPath, { cache: "no-store" });
    if (probe.status === 401) return ERRORS.auth(wsPath.includes("token="));
    if (probe.status === 403) return ERRORS.origin(location.origin);
  } catch {
    return ERRORS.unreachable(host);
  }
  return ERRORS.refused();
}
