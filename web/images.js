// What the assistant sees: a camera snapshot, a screen snapshot, or an image dropped (anywhere on
// the page), pasted or chosen, shown to a model that takes images (GET /healthz says `takes_images`).
//
// The page keeps one image. It goes to the server in `session.image` (docs/protocol.md) as soon as
// a conversation is ready, and again at the start of the next one; the server answers
// `session.image.updated` once the model sees it (or an `error`), which the status line says.
// Images go at 448 x 448, the square the model sees every image squashed to: a snapshot or a
// larger file is drawn into it and sent as a JPEG; a JPEG, PNG or WebP file already within 448 px
// goes as it is (the server then resizes it exactly as the model's own server does).

export const IMAGE_SIDE = 448;
const SENT_TYPES = ["image/jpeg", "image/png", "image/webp"];
const JPEG_QUALITY = 0.9;
const MAX_FILE_BYTES = 700 * 1024; // a file sent as it is must fit one 1 MiB message in base64
const FRAME_WAIT_MS = 2000;

const STATUS = {
  none: "",
  pending: "Shown when the conversation starts.",
  sending: "Sending…",
  shown: "The assistant sees this.",
  removed: "",
};

export class ImagePanel {
  /** root: the panel's element (hidden until `setAvailable(true)`); client: the AssistantClient. */
  constructor(root, client) {
    this.root = root;
    this.client = client;
    this.image = null; // {dataUrl, width, height, source} of the image the page holds
    this.el = {
      drop: root.querySelector('[data-testid="image-drop"]'),
      thumb: root.querySelector('[data-testid="image-thumb"]'),
      empty: root.querySelector(".image-empty"),
      status: root.querySelector('[data-testid="image-status"]'),
      camera: root.querySelector('[data-testid="image-camera"]'),
      screen: root.querySelector('[data-testid="image-screen"]'),
      file: root.querySelector('[data-testid="image-file"]'),
      remove: root.querySelector('[data-testid="image-remove"]'),
    };
    this.el.camera.addEventListener("click", () => this.snapshot("camera"));
    this.el.screen.addEventListener("click", () => this.snapshot("screen"));
    this.el.screen.hidden = !navigator.mediaDevices?.getDisplayMedia;
    this.el.file.addEventListener("change", () => {
      const [file] = this.el.file.files;
      this.el.file.value = ""; // the same file chosen again is a change too
      if (file) this.takeFile(file, "file");
    });
    this.el.remove.addEventListener("click", () => this.remove());
    // A file dropped anywhere on the page is taken (a browser would otherwise leave the page for it).
    document.addEventListener("dragover", (e) => {
      if (this.root.hidden || !hasFiles(e.dataTransfer)) return;
      e.preventDefault();
      this.el.drop.dataset.over = "true";
    });
    document.addEventListener("dragleave", (e) => {
      if (!e.relatedTarget) delete this.el.drop.dataset.over; // left the window
    });
    document.addEventListener("drop", (e) => {
      if (this.root.hidden || !hasFiles(e.dataTransfer)) return;
      e.preventDefault();
      delete this.el.drop.dataset.over;
      const file = imageFile(e.dataTransfer);
      if (file) this.takeFile(file, "drop");
      else this.show("error", "Drop an image file (JPEG, PNG or WebP).");
    });
    document.addEventListener("paste", (e) => {
      if (this.root.hidden) return;
      const file = imageFile(e.clipboardData);
      if (!file) return; // text pastes go where they were meant to
      e.preventDefault();
      this.takeFile(file, "paste");
    });
    client.addEventListener("event", (e) => this.onServerEvent(e.detail));
    client.addEventListener("statechange", () => {
      if (!client.live && this.image) this.show("pending");
    });
    this.render();
  }

  /** Show the panel when the server's model takes images; otherwise it stays hidden. */
  setAvailable(available) {
    this.root.hidden = !available;
  }

  async snapshot(source) {
    const button = source === "camera" ? this.el.camera : this.el.screen;
    button.disabled = true;
    this.show("sending", source === "camera" ? "Taking a photo…" : "Choose what to share…");
    let stream;
    try {
      stream =
        source === "camera"
          ? await navigator.mediaDevices.getUserMedia({ video: { width: { ideal: 1280 } }, audio: false })
          : await navigator.mediaDevices.getDisplayMedia({ video: true, audio: false });
      const frame = await grabFrame(stream);
      this.use(squareJpeg(frame, frame.videoWidth, frame.videoHeight), frame.videoWidth, frame.videoHeight, source);
    } catch (err) {
      this.show("error", captureError(source, err));
    } finally {
      for (const track of stream?.getTracks() ?? []) track.stop();
      button.disabled = false;
    }
  }

  async takeFile(file, source) {
    if (!file.type.startsWith("image/")) {
      this.show("error", `${file.name || "That"} is not an image.`);
      return;
    }
    let bitmap;
    try {
      bitmap = await createImageBitmap(file);
    } catch {
      this.show("error", `${file.name || "The image"} cannot be read as an image.`);
      return;
    }
    const { width, height } = bitmap;
    const asItIs = SENT_TYPES.includes(file.type) && width <= IMAGE_SIDE && height <= IMAGE_SIDE;
    const dataUrl = asItIs && file.size <= MAX_FILE_BYTES ? await readDataUrl(file) : squareJpeg(bitmap, width, height);
    bitmap.close();
    this.use(dataUrl, width, height, source);
  }

  use(dataUrl, width, height, source) {
    this.image = { dataUrl, width, height, source };
    this.render();
    this.send();
  }

  remove() {
    const had = this.image !== null;
    this.image = null;
    this.render();
    if (had && this.client.sendImage(null)) this.show("sending", "Removing…");
    else this.show("none");
    this.el.camera.focus(); // the remove button is gone
  }

  /** Send the image held now, if a conversation is ready for it. */
  send() {
    if (!this.image) return;
    this.show(this.client.sendImage(this.image.dataUrl) ? "sending" : "pending");
  }

  onServerEvent(event) {
    if (event.type === "session.ready") this.send();
    else if (event.type === "session.image.updated") {
      if (event.image && this.image) this.show("shown");
      else if (!event.image) this.show(this.image ? "sending" : "removed");
    } else if (event.type === "error" && IMAGE_ERRORS.has(event.code)) {
      this.show("error", `Not shown: ${event.message}`);
    }
  }

  render() {
    const image = this.image;
    this.el.thumb.hidden = !image;
    this.el.empty.hidden = Boolean(image);
    this.el.remove.hidden = !image;
    if (image) {
      this.el.thumb.src = image.dataUrl;
      // Drawn at the proportions it was taken with: the model sees the same pixels squashed square.
      this.el.thumb.style.aspectRatio = `${image.width} / ${image.height}`;
      this.el.thumb.alt = `What the assistant is shown: ${SOURCE_NAMES[image.source]} (${image.width} × ${image.height})`;
    } else {
      this.el.thumb.removeAttribute("src");
    }
  }

  show(state, message) {
    this.root.dataset.state = state;
    this.el.status.textContent = message ?? STATUS[state] ?? "";
  }
}

const IMAGE_ERRORS = new Set([
  "corrupt_image",
  "unsupported_image_type",
  "image_too_large",
  "image_dimensions_too_large",
  "images_not_supported",
]);
const SOURCE_NAMES = { camera: "a camera photo", screen: "a screenshot", file: "a chosen image", drop: "a dropped image", paste: "a pasted image" };

/** A video element playing `stream`, once it has a frame to draw. */
async function grabFrame(stream) {
  const video = document.createElement("video");
  video.muted = true;
  video.playsInline = true;
  video.srcObject = stream;
  await video.play();
  await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the camera sent no picture")), FRAME_WAIT_MS);
    const ready = () => {
      clearTimeout(timer);
      resolve();
    };
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(ready);
    else if (video.readyState >= 2) ready();
    else video.addEventListener("loadeddata", ready, { once: true });
  });
  return video;
}

/** `source` drawn into the model's 448 x 448 square, as a JPEG data URL. */
function squareJpeg(source, width, height) {
  if (!(width > 0 && height > 0)) throw new Error("the picture is empty");
  const canvas = document.createElement("canvas");
  canvas.width = IMAGE_SIDE;
  canvas.height = IMAGE_SIDE;
  const context = canvas.getContext("2d");
  context.imageSmoothingQuality = "high";
  context.drawImage(source, 0, 0, IMAGE_SIDE, IMAGE_SIDE);
  return canvas.toDataURL("image/jpeg", JPEG_QUALITY);
}

function readDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(file);
  });
}

function hasFiles(transfer) {
  return Boolean(transfer?.types?.includes("Files"));
}

/** The first image file a drop or a paste carries, or null. */
function imageFile(transfer) {
  for (const item of transfer?.items ?? []) {
    if (item.kind === "file" && item.type.startsWith("image/")) return item.getAsFile();
  }
  return [...(transfer?.files ?? [])].find((f) => f.type.startsWith("image/")) ?? null;
}

function captureError(source, err) {
  const what = source === "camera" ? "camera" : "screen";
  if (err?.name === "NotAllowedError") return `The ${what} was not allowed. Allow it in the browser, or choose a file.`;
  if (err?.name === "NotFoundError") return `No ${what} was found. Choose a file instead.`;
  return `The ${what} snapshot failed: ${err?.message ?? err}`;
}
