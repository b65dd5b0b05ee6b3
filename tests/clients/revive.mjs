// A JavaScript live client, as a browser map would be: connects to /live with ?access_token=, subscribes
// to one device, revives {"__bigint"} as BigInt and {"__buffer_b64"} as bytes, and prints what it got.
// Usage: node --experimental-websocket revive.mjs <ws-url-with-token> <device> <count>
// Prints one JSON line: {"snapshot":[...],"positions":[...]}, each document re-encoded to the wire form
// from the revived values, plus "types": the JavaScript type of every revived sentinel, by path.
const [url, device, countText] = process.argv.slice(2);
const count = Number(countText);

function revive(_key, value) {
  if (value && typeof value === "object" && !Array.isArray(value)) {
    const keys = Object.keys(value);
    if (keys.length === 1 && keys[0] === "__bigint") return BigInt(value.__bigint);
    if (keys.length === 1 && keys[0] === "__buffer_b64") return Uint8Array.from(Buffer.from(value.__buffer_b64, "base64"));
  }
  return value;
}

// Back to the wire form: what a client sends elsewhere must be the same document.
function toWire(value) {
  if (typeof value === "bigint") return { __bigint: value.toString() };
  if (value instanceof Uint8Array) return { __buffer_b64: Buffer.from(value).toString("base64") };
  if (Array.isArray(value)) return value.map(toWire);
  if (value && typeof value === "object") return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toWire(v)]));
  return value;
}

function types(value, path, out) {
  if (typeof value === "bigint") out[path] = "bigint:" + value.toString();
  else if (value instanceof Uint8Array) out[path] = "bytes:" + Buffer.from(value).toString("hex");
  else if (value && typeof value === "object") for (const [k, v] of Object.entries(value)) types(v, path ? path + "." + k : k, out);
  return out;
}

const result = { snapshot: [], positions: [], types: {} };
const socket = new WebSocket(url);
const timer = setTimeout(() => { console.log(JSON.stringify({ error: "timeout", ...result })); process.exit(2); }, 15000);
socket.onerror = (e) => { console.log(JSON.stringify({ error: String(e.message || e) })); process.exit(3); };
socket.onmessage = (event) => {
  const frame = JSON.parse(event.data, revive);
  if (frame.type === "authenticated") socket.send(JSON.stringify({ type: "subscribe", device }));
  if (frame.type === "error") { console.log(JSON.stringify({ error: frame })); process.exit(4); }
  if (frame.type === "subscribed" || frame.type === "snapshot") {
    for (const doc of frame.snapshot) { result.snapshot.push(toWire(doc)); types(doc, "snapshot", result.types); }
  }
  if (frame.type === "positions") {
    for (const p of frame.positions) { result.positions.push(toWire(p.position)); types(p.position, "live", result.types); }
  }
  if (result.positions.length >= count) {
    clearTimeout(timer);
    console.log(JSON.stringify(result));
    socket.close();
    process.exit(0);
  }
};
