// The microphone and speaker pickers: the browser's devices as <option>s, kept up to date.
//
// Browsers name devices only once the page may use the microphone, so the lists are filled
// again after a conversation starts and whenever a device comes or goes. The first option is
// always the system's default (value ""), which follows the operating system's choice.

const DEFAULT_LABEL = { audioinput: "System default microphone", audiooutput: "System default speaker" };
const UNNAMED = { audioinput: "Microphone", audiooutput: "Speaker" };
// Aliases of other entries in Chromium's list ("default", and "communications" on Windows).
const ALIASES = new Set(["default", "communications", ""]);

/**
 * Keep `select` listing the devices of `kind` ("audioinput" or "audiooutput") with `chosen()`
 * selected. Returns `refresh()`, to call when the names may have become available.
 */
export function devicePicker(select, kind, chosen) {
  async function refresh() {
    let devices = [];
    try {
      devices = await navigator.mediaDevices.enumerateDevices();
    } catch {
      devices = []; // no device list in this browser: the default is all there is
    }
    const listed = devices.filter((d) => d.kind === kind && !ALIASES.has(d.deviceId));
    const options = [new Option(DEFAULT_LABEL[kind], "")];
    listed.forEach((device, i) => options.push(new Option(device.label || `${UNNAMED[kind]} ${i + 1}`, device.deviceId)));
    select.replaceChildren(...options);
    const wanted = chosen();
    select.value = listed.some((d) => d.deviceId === wanted) ? wanted : "";
  }
  navigator.mediaDevices?.addEventListener?.("devicechange", refresh);
  refresh();
  return refresh;
}
