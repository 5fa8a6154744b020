// The conversation's history on the page: captions of both sides, kept after Stop until Clear.
//
// Each conversation gets its own group (its times restart at 0), headed by when it started once
// there is more than one. Within a group, turns are ordered by when they began: the user's
// caption arrives after the utterance ends, so it is placed by its start time.

const WHO = { user: "You", assistant: "Assistant" };

export class Captions {
  /** `log`: the captions element (role="log"), holding its `.captions-empty` placeholder. */
  constructor(log) {
    this.log = log;
    this.placeholder = log.querySelector(".captions-empty");
    this.group = null; // the current conversation's turns
    this.assistantTurn = null; // {el, textEl, text}: the assistant's turn still being spoken
  }

  get empty() {
    return this.log.querySelector(".turn") === null;
  }

  /** A conversation started: its turns go into a new group. */
  startConversation() {
    this.assistantTurn = null;
    this.group = null;
  }

  /** Forget every conversation shown so far. */
  clear() {
    this.log.replaceChildren(this.placeholder);
    this.group = null;
    this.assistantTurn = null;
  }

  currentGroup() {
    if (this.group) return this.group;
    this.placeholder.remove();
    const group = document.createElement("div");
    group.className = "conversation";
    if (this.log.querySelector(".conversation")) {
      const divider = document.createElement("p");
      divider.className = "conversation-start";
      const time = new Date().toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      divider.textContent = `New conversation, ${time}`;
      group.append(divider);
    }
    this.log.append(group);
    this.group = group;
    return group;
  }

  addTurn(who, atMs) {
    const group = this.currentGroup();
    const el = document.createElement("div");
    el.className = `turn turn--${who}`;
    el.dataset.who = who;
    el.dataset.at = String(atMs ?? Number.MAX_SAFE_INTEGER);
    const label = document.createElement("span");
    label.className = "turn-who";
    label.textContent = WHO[who];
    const textEl = document.createElement("p");
    textEl.className = "turn-text";
    el.append(label, textEl);
    const later = [...group.querySelectorAll(".turn")].find((c) => Number(c.dataset.at) > Number(el.dataset.at));
    group.insertBefore(el, later ?? null);
    return { el, textEl, text: "" };
  }

  scroll() {
    this.log.scrollTop = this.log.scrollHeight;
  }

  /** One server event (see docs/protocol.md); the ones that are not about captions are ignored. */
  onEvent(event) {
    switch (event.type) {
      case "session.ready":
        this.startConversation();
        break;
      case "input.speech_started":
        // Whatever the assistant says after the user spoke is a new turn, even without a barge-in.
        if (this.assistantTurn?.text.trim()) this.assistantTurn = null;
        break;
      case "assistant.text":
        this.onAssistantText(event);
        break;
      case "barge_in":
        this.onBargeIn(event);
        break;
      case "user.transcript":
        if (!event.text?.trim()) break;
        this.addTurn("user", event.start_ms).textEl.textContent = event.text.trim();
        this.scroll();
        break;
      default:
        break;
    }
  }

  onAssistantText(event) {
    if (!this.assistantTurn) this.assistantTurn = this.addTurn("assistant", event.at_ms);
    const turn = this.assistantTurn;
    turn.text += event.text;
    turn.textEl.textContent = turn.text.trimStart();
    this.scroll();
  }

  /** Strike through what the listener never heard, and close the turn. */
  onBargeIn(event) {
    const last = this.group?.querySelectorAll(".turn--assistant");
    const el = this.assistantTurn?.el ?? last?.[last.length - 1];
    this.assistantTurn = null;
    if (!el) return;
    const textEl = el.querySelector(".turn-text");
    const shown = textEl.textContent;
    const cut = (event.cut_text ?? "").trim();
    let heard = shown;
    let unheard = cut;
    const at = cut ? shown.lastIndexOf(cut) : -1;
    if (at >= 0 && shown.slice(at + cut.length).trim() === "") {
      heard = shown.slice(0, at);
      unheard = shown.slice(at);
    }
    textEl.textContent = heard;
    if (unheard) {
      const del = document.createElement("del");
      del.className = "cut";
      del.title = "Not heard: you interrupted";
      del.textContent = unheard;
      textEl.append(del);
    }
    const badge = document.createElement("span");
    badge.className = "turn-badge";
    badge.textContent = "interrupted";
    el.querySelector(".turn-who").append(badge);
    el.classList.add("turn--cut");
    this.scroll();
  }
}
