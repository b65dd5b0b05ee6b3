// Trackway live map: a browser client of /live (docs/live-protocol.md). Plain JavaScript, no build step,
// nothing loaded from other hosts except optional tiles (TRACKWAY_MAP_TILE_URL) and, in `directus` mode,
// the login request to Directus.
//
// window.trackwayMap = {state, devices, subscriptions, view, socket} is there to be read (by tests, or from
// the console); the DOM shows the same: markers are <g class="marker" data-device data-lat data-lon>.
(() => {
  "use strict";

  const SVG_NS = "http://www.w3.org/2000/svg";
  const TOKEN_KEY = "trackway.token";
  const REFRESH_KEY = "trackway.refresh";
  const SUBS_KEY = "trackway.subscriptions";
  const TRACK_POINTS = 200;
  const MAX_ZOOM = 19;
  const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
  const $ = (id) => document.getElementById(id);

  // §9: {"__bigint": "…"} → BigInt, {"__buffer_b64": "…"} → Uint8Array.
  function reviveTrackway(key, value) {
    if (value !== null && typeof value === "object" && !Array.isArray(value)) {
      const keys = Object.keys(value);
      if (keys.length === 1 && typeof value[keys[0]] === "string") {
        if (keys[0] === "__bigint") return BigInt(value.__bigint);
        if (keys[0] === "__buffer_b64") {
          const binary = atob(value.__buffer_b64);
          const bytes = new Uint8Array(binary.length);
          for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
          return bytes;
        }
      }
    }
    return value;
  }

  // Timestamps have 3 or 6 fraction digits; pad to 6 so that strings compare in time order.
  const timeKey = (ts) => ts.replace(/\.(\d{3})Z$/, ".$1000Z");

  // ---- state ----------------------------------------------------------------------------------------

  const state = {
    conn: "idle", // idle | connecting | live | reconnecting | error
    detail: "",
    closeCode: null,
    closeReason: "",
    connects: 0, // sockets opened
    user: null,
    expiresAt: null,
    config: null,
    stats: { positions: 0, late: 0, duplicates: 0, snapshots: 0, replays: 0, replayed: 0 },
    sent: [], // the last subscribe / unsubscribe messages sent
  };
  /** deviceId → {id, doc, t, lat, lon, track: [{t, lat, lon}], sources: Set, color} */
  const devices = new Map();
  /** "group:fleet" / "device:356…" → {key, kind, id, cursor, status, error} */
  const subscriptions = new Map();
  const view = { cx: 0.5, cy: 0.5, z: 1, auto: true, selected: null };

  let config = { auth: "jwt", directusUrl: null, livePath: "/live", tileUrl: null };
  let ws = null;
  let attempt = 0;
  let reconnectTimer = null;
  let heartbeat = null;
  let renewTimer = null;
  let lastHeard = 0;
  let replay = null; // {sub, left}: positions still to come of the replay just announced

  window.trackwayMap = Object.freeze({
    state,
    devices,
    subscriptions,
    view,
    get socket() {
      return ws;
    },
  });

  // ---- connection -----------------------------------------------------------------------------------

  const token = () => sessionStorage.getItem(TOKEN_KEY);

  function setConn(conn, detail = "") {
    state.conn = conn;
    state.detail = detail;
    const el = $("conn");
    el.dataset.state = conn;
    el.textContent = detail ? `${conn} · ${detail}` : conn;
  }

  function liveUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}${config.livePath}`;
  }

  function connect() {
    clearTimeout(reconnectTimer);
    if (config.auth !== "none" && !token()) {
      setConn("idle", "log in to connect");
      return;
    }
    setConn(state.connects ? "reconnecting" : "connecting", state.connects ? "connecting" : "");
    // The token goes in the first message, not the URL, so that it stays out of access logs.
    const socket = new WebSocket(liveUrl());
    ws = socket;
    state.connects++;
    replay = null;
    let authenticated = false;
    socket.onopen = () => {
      lastHeard = Date.now();
      if (config.auth !== "none") socket.send(JSON.stringify({ type: "auth", token: token() }));
    };
    socket.onmessage = (event) => {
      if (socket !== ws) return;
      lastHeard = Date.now();
      let msg;
      try {
        msg = JSON.parse(event.data, reviveTrackway);
      } catch (e) {
        console.warn("trackway: unreadable frame", e);
        return;
      }
      if (msg.type === "authenticated" && !authenticated) {
        authenticated = true;
        onAuthenticated(socket, msg);
      } else {
        onMessage(socket, msg);
      }
    };
    socket.onclose = (event) => {
      if (socket !== ws) return;
      ws = null;
      onClosed(event.code, event.reason);
    };
  }

  function send(socket, message) {
    if (message.type === "subscribe" || message.type === "unsubscribe") {
      state.sent.push(message);
      if (state.sent.length > 50) state.sent.shift();
    }
    socket.send(JSON.stringify(message));
  }

  function onAuthenticated(socket, msg) {
    attempt = 0;
    state.user = msg.user;
    state.expiresAt = msg.expiresAt;
    setConn("live");
    showWho();
    scheduleRenewal(socket, msg.expiresAt);
    // Resume every subscription: with its cursor when it has one (no gap), else from a snapshot.
    for (const sub of subscriptions.values()) subscribe(socket, sub);
    clearInterval(heartbeat);
    heartbeat = setInterval(() => {
      if (socket !== ws) return clearInterval(heartbeat);
      if (Date.now() - lastHeard > 80000) {
        socket.close(4000, "no answer"); // onclose reconnects
      } else {
        send(socket, { type: "ping" });
      }
    }, 25000);
  }

  function subscribe(socket, sub) {
    if (sub.status === "error" && sub.error === "forbidden") return;
    const message = { type: "subscribe", [sub.kind]: sub.id, id: sub.key };
    if (sub.cursor) message.since = sub.cursor;
    sub.status = "pending";
    sub.error = null;
    send(socket, message);
    renderSubs();
  }

  function onMessage(socket, msg) {
    switch (msg.type) {
      case "authenticated": // a renewal went through
        state.expiresAt = msg.expiresAt;
        scheduleRenewal(socket, msg.expiresAt);
        showWho();
        break;
      case "subscribed": {
        const sub = subscriptions.get(msg.group !== undefined ? `group:${msg.group}` : `device:${msg.device}`);
        if (!sub) break; // unsubscribed meanwhile
        if (Array.isArray(msg.snapshot)) {
          state.stats.snapshots++;
          msg.snapshot.forEach((doc) => show(doc, sub));
          sub.cursor = msg.cursor;
          sub.status = "live";
        } else {
          // Replay form: the cursor stays `since` until the replayed positions arrive (§7.2).
          state.stats.replays++;
          if (msg.replay > 0) {
            replay = { sub, left: msg.replay };
            sub.status = "replaying";
          } else {
            sub.status = "live";
          }
        }
        renderSubs();
        break;
      }
      case "snapshot": {
        // The rest of a big snapshot: right after its subscribed frame (§4, `snapshot`).
        const sub = subscriptions.get(msg.group !== undefined ? `group:${msg.group}` : `device:${msg.device}`);
        if (sub) msg.snapshot.forEach((doc) => show(doc, sub));
        break;
      }
      case "positions":
        for (const item of msg.positions) {
          if (replay && replay.left > 0) {
            // Replayed positions set the cursor of their own subscription only.
            state.stats.replayed++;
            show(item.position, replay.sub);
            replay.sub.cursor = item.cursor;
            if (--replay.left === 0) {
              if (replay.sub.status === "replaying") replay.sub.status = "live";
              replay = null;
              renderSubs();
            }
          } else {
            // Live positions: the cursor of every subscription past its subscribed frame (and replay).
            show(item.position, null);
            for (const sub of subscriptions.values()) if (sub.status === "live") sub.cursor = item.cursor;
          }
        }
        break;
      case "unsubscribed": {
        const key = msg.group !== undefined ? `group:${msg.group}` : `device:${msg.device}`;
        const sub = subscriptions.get(key);
        if (sub && msg.reason === "forbidden") {
          sub.status = "error";
          sub.error = "forbidden";
          renderSubs();
        }
        break;
      }
      case "error":
        onError(socket, msg);
        break;
      default: // pong and frame types of newer relays
        break;
    }
  }

  function onError(socket, msg) {
    const sub = typeof msg.id === "string" ? subscriptions.get(msg.id) : undefined;
    switch (msg.code) {
      case "resume_too_far":
      case "bad_cursor":
        if (sub) {
          sub.cursor = null; // start again from a snapshot
          subscribe(socket, sub);
        }
        return;
      case "unavailable":
        if (sub) {
          sub.status = "error";
          sub.error = "unavailable, retrying";
          setTimeout(() => socket === ws && subscriptions.get(sub.key) === sub && subscribe(socket, sub), 5000);
        }
        break;
      case "already_subscribed":
        if (sub) sub.status = "live";
        break;
      case "bad_token":
      case "auth_unavailable":
        setTimeout(() => renew(socket), 10000);
        break;
      default:
        if (sub) {
          sub.status = "error";
          sub.error = msg.code;
        }
        console.warn("trackway live:", msg.code, msg.message);
    }
    renderSubs();
  }

  function onClosed(code, reason) {
    clearInterval(heartbeat);
    clearTimeout(renewTimer);
    replay = null;
    state.closeCode = code;
    state.closeReason = reason;
    for (const sub of subscriptions.values()) if (sub.status !== "error") sub.status = "pending";
    renderSubs();
    if ([1002, 1003, 1007, 1009].includes(code)) {
      setConn("error", `${code} ${reason}`.trim()); // this client sent something wrong: do not loop
      return;
    }
    if (code === 4001 || code === 4003) {
      // The token is refused or expired: only a new one helps.
      if (sessionStorage.getItem(REFRESH_KEY)) {
        refreshDirectus().then(connect, (e) => loginNeeded(code, `${reason}; ${e.message}`));
      } else {
        loginNeeded(code, reason);
      }
      return;
    }
    const delay = Math.min(30000, 1000 * 2 ** attempt++) * (0.75 + Math.random() / 2);
    setConn("reconnecting", `${code}${reason ? " " + reason : ""}, again in ${Math.round(delay / 100) / 10} s`);
    reconnectTimer = setTimeout(connect, delay);
  }

  function loginNeeded(code, reason) {
    sessionStorage.removeItem(TOKEN_KEY);
    setConn("error", `${code} ${reason || "log in again"}`);
    showLogin();
  }

  // ---- tokens ---------------------------------------------------------------------------------------

  function scheduleRenewal(socket, expiresAt) {
    clearTimeout(renewTimer);
    if (!expiresAt || !sessionStorage.getItem(REFRESH_KEY)) return; // a pasted token cannot be renewed here
    const left = Date.parse(expiresAt) - Date.now();
    renewTimer = setTimeout(() => renew(socket), Math.max(left - 60000, left / 2, 1000));
  }

  async function renew(socket) {
    try {
      await refreshDirectus();
      if (socket === ws && socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify({ type: "auth", token: token(), id: "renew" }));
      }
    } catch (e) {
      console.warn("trackway: token refresh failed", e);
      renewTimer = setTimeout(() => renew(socket), 10000);
    }
  }

  async function directus(path, body) {
    const response = await fetch(`${config.directusUrl}${path}`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(body),
      credentials: "omit",
    });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok || !answer.data || !answer.data.access_token) {
      const why = answer.errors && answer.errors[0] && answer.errors[0].message;
      throw new Error(why || `Directus answered HTTP ${response.status}`);
    }
    sessionStorage.setItem(TOKEN_KEY, answer.data.access_token);
    if (answer.data.refresh_token) sessionStorage.setItem(REFRESH_KEY, answer.data.refresh_token);
  }

  async function refreshDirectus() {
    const refresh = sessionStorage.getItem(REFRESH_KEY);
    if (!refresh || !config.directusUrl) throw new Error("no refresh token");
    await directus("/auth/refresh", { refresh_token: refresh, mode: "json" });
  }

  function showLogin() {
    const loggedIn = config.auth === "none" || !!token();
    $("login").hidden = loggedIn;
    $("logout").hidden = !loggedIn || config.auth === "none";
    $("login-token").hidden = config.auth !== "jwt";
    $("login-directus").hidden = config.auth !== "directus";
    $("token").required = config.auth === "jwt";
    $("email").required = $("password").required = config.auth === "directus";
    showWho();
  }

  function showWho() {
    const who = $("who");
    who.hidden = state.conn !== "live";
    const until = state.expiresAt ? ` until ${new Date(state.expiresAt).toLocaleTimeString()}` : "";
    who.textContent = state.user ? `user ${state.user}${until}` : config.auth === "none" ? "no authentication" : "";
  }

  async function onLogin(event) {
    event.preventDefault();
    try {
      if (config.auth === "directus") {
        $("login-button").disabled = true;
        await directus("/auth/login", { email: $("email").value, password: $("password").value, mode: "json" });
        $("password").value = "";
      } else {
        const value = $("token").value.trim();
        if (!value) return;
        sessionStorage.setItem(TOKEN_KEY, value);
        $("token").value = "";
      }
      attempt = 0;
      showLogin();
      connect();
    } catch (e) {
      setConn("error", `login failed: ${e.message}`);
    } finally {
      $("login-button").disabled = false;
    }
  }

  function onLogout() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(REFRESH_KEY);
    clearTimeout(reconnectTimer);
    if (ws) {
      const socket = ws;
      ws = null;
      socket.close(1000);
    }
    clearInterval(heartbeat);
    clearTimeout(renewTimer);
    state.user = state.expiresAt = null;
    setConn("idle", "logged out");
    showLogin();
  }

  // ---- subscriptions --------------------------------------------------------------------------------

  function saveSubscriptions() {
    const targets = [...subscriptions.values()].map((s) => [s.kind, s.id]);
    sessionStorage.setItem(SUBS_KEY, JSON.stringify(targets));
  }

  function addSubscription(kind, id) {
    const key = `${kind}:${id}`;
    if (!id || subscriptions.has(key)) return;
    const sub = { key, kind, id, cursor: null, status: "pending", error: null };
    subscriptions.set(key, sub);
    saveSubscriptions();
    if (ws && state.conn === "live") subscribe(ws, sub);
    renderSubs();
  }

  function removeSubscription(key) {
    const sub = subscriptions.get(key);
    if (!sub) return;
    subscriptions.delete(key);
    saveSubscriptions();
    if (ws && state.conn === "live" && sub.status !== "error") {
      send(ws, { type: "unsubscribe", [sub.kind]: sub.id, id: `unsubscribe:${key}` });
    }
    for (const [id, device] of devices) {
      device.sources.delete(key);
      if (device.sources.size === 0) devices.delete(id);
    }
    renderSubs();
    scheduleRender();
  }

  // ---- positions ------------------------------------------------------------------------------------

  function show(doc, sub) {
    if (!doc || typeof doc.deviceId !== "string" || typeof doc.latitude !== "number") return;
    state.stats.positions++;
    const t = timeKey(doc.timestamp);
    let device = devices.get(doc.deviceId);
    if (!device) {
      device = { id: doc.deviceId, doc: null, t: "", lat: 0, lon: 0, track: [], sources: new Set(), color: null };
      device.color = COLORS[hash(doc.deviceId) % COLORS.length];
      devices.set(doc.deviceId, device);
    }
    if (sub) {
      device.sources.add(sub.key);
    } else if (subscriptions.has(`device:${doc.deviceId}`)) {
      device.sources.add(`device:${doc.deviceId}`);
    } else {
      for (const s of subscriptions.values()) if (s.kind === "group" && s.status === "live") device.sources.add(s.key);
    }
    addToTrack(device, t, doc.latitude, doc.longitude);
    if (device.doc && t <= device.t) {
      // A late (older) position, or one already shown: the marker stays where it is (§7.5).
      if (t < device.t) state.stats.late++;
      else state.stats.duplicates++;
      return;
    }
    device.doc = doc;
    device.t = t;
    device.lat = doc.latitude;
    device.lon = doc.longitude;
    scheduleRender();
  }

  function addToTrack(device, t, lat, lon) {
    const track = device.track;
    let i = track.length;
    while (i > 0 && track[i - 1].t > t) i--;
    if (i > 0 && track[i - 1].t === t) return;
    track.splice(i, 0, { t, lat, lon });
    if (track.length > TRACK_POINTS) track.shift();
  }

  function hash(text) {
    let h = 0;
    for (let i = 0; i < text.length; i++) h = (h * 31 + text.charCodeAt(i)) >>> 0;
    return h;
  }

  // ---- formatting -----------------------------------------------------------------------------------

  function formatValue(value) {
    if (typeof value === "bigint") return value.toString();
    if (value instanceof Uint8Array) {
      return "0x" + Array.from(value, (b) => b.toString(16).padStart(2, "0")).join("");
    }
    if (value !== null && typeof value === "object") {
      return JSON.stringify(value, (k, v) =>
        typeof v === "bigint" ? v.toString() : v instanceof Uint8Array ? formatValue(v) : v,
      );
    }
    return String(value);
  }

  // Teltonika's most telling IO elements come first: ignition, movement, external voltage (mV), GSM signal,
  // odometer (m); then the rest by number.
  const KEY_ATTRIBUTES = ["239", "240", "66", "21", "16"];
  const attributeRank = (k) => (KEY_ATTRIBUTES.includes(k) ? KEY_ATTRIBUTES.indexOf(k) : KEY_ATTRIBUTES.length);

  // All attributes on one line (`limit` 0, for the tooltip), or the first `limit` one per line, long values
  // shortened (for the list).
  function formatAttributes(attributes, limit) {
    if (!attributes || typeof attributes !== "object") return "";
    const keys = Object.keys(attributes).sort(
      (a, b) => attributeRank(a) - attributeRank(b) || Number(a) - Number(b) || a.localeCompare(b),
    );
    if (!limit) return keys.map((k) => `${k}=${formatValue(attributes[k])}`).join(" ");
    const short = (text) => (text.length > 12 ? `${text.slice(0, 11)}…` : text);
    const lines = keys.slice(0, limit).map((k) => `${k}=${short(formatValue(attributes[k]))}`);
    if (keys.length > limit) lines.push(`+${keys.length - limit} more`);
    return lines.join("\n");
  }

  function formatAge(timestamp) {
    const seconds = Math.round((Date.now() - Date.parse(timestamp)) / 1000);
    if (!Number.isFinite(seconds)) return "";
    const abs = Math.abs(seconds);
    const text =
      abs < 90 ? `${abs} s` : abs < 5400 ? `${Math.round(abs / 60)} min` : abs < 172800 ? `${Math.round(abs / 3600)} h` : `${Math.round(abs / 86400)} d`;
    return seconds < 0 ? `in ${text}` : text;
  }

  const compass = (angle) => ["N", "NE", "E", "SE", "S", "SW", "W", "NW"][Math.round((((angle % 360) + 360) % 360) / 45) % 8];

  // ---- map ------------------------------------------------------------------------------------------

  const svg = () => $("map");
  const worldX = (lon) => (lon + 180) / 360;
  function worldY(lat) {
    const clamped = Math.max(-85.0511, Math.min(85.0511, lat));
    const s = Math.sin((clamped * Math.PI) / 180);
    return 0.5 - Math.log((1 + s) / (1 - s)) / (4 * Math.PI);
  }
  const lonOf = (x) => x * 360 - 180;
  const latOf = (y) => (Math.atan(Math.sinh(Math.PI * (1 - 2 * y))) * 180) / Math.PI;

  function size() {
    const rect = svg().getBoundingClientRect();
    return { w: Math.max(rect.width, 1), h: Math.max(rect.height, 1) };
  }
  const scaleOf = (z) => 256 * 2 ** z;

  function fit(w, h) {
    const points = [...devices.values()].filter((d) => d.doc);
    if (points.length === 0) {
      view.cx = 0.5;
      view.cy = 0.5;
      view.z = Math.max(0, Math.log2(Math.min(w, h) / 256));
      return;
    }
    const xs = points.map((d) => worldX(d.lon));
    const ys = points.map((d) => worldY(d.lat));
    const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
    view.cx = (x0 + x1) / 2;
    view.cy = (y0 + y1) / 2;
    const spanX = Math.max(x1 - x0, 1e-9);
    const spanY = Math.max(y1 - y0, 1e-9);
    // Room for the labels (device ids, up to about 150 px) beside the outermost markers.
    const usableW = Math.max(w * 0.5, w - 320);
    const z = Math.log2(Math.min(usableW / (spanX * 256), (h * 0.75) / (spanY * 256)));
    view.z = Math.max(1, Math.min(points.length === 1 ? 15 : 17, z));
  }

  function el(name, attributes, parent) {
    const node = document.createElementNS(SVG_NS, name);
    for (const [k, v] of Object.entries(attributes)) node.setAttribute(k, v);
    if (parent) parent.appendChild(node);
    return node;
  }

  function niceStep(span, lines) {
    const raw = span / lines;
    const steps = [1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 45, 90];
    return steps.find((s) => s >= raw) || 90;
  }
  const decimals = (step) => Math.max(0, Math.ceil(-Math.log10(step) - 1e-9));

  let renderQueued = false;
  function scheduleRender() {
    if (renderQueued) return;
    renderQueued = true;
    requestAnimationFrame(() => {
      renderQueued = false;
      render();
    });
  }

  function render() {
    const { w, h } = size();
    if (view.auto) fit(w, h);
    const scale = scaleOf(view.z);
    const sx = (x) => (x - view.cx) * scale + w / 2;
    const sy = (y) => (y - view.cy) * scale + h / 2;
    const map = svg();
    map.setAttribute("viewBox", `0 0 ${w} ${h}`);
    map.replaceChildren();

    // The world's outline, then tiles (when configured), then the graticule.
    el("rect", { class: "world", x: sx(0), y: sy(0), width: scale, height: scale }, map);
    if (config.tileUrl) renderTiles(map, w, h, sx, sy);
    const left = Math.max(-180, lonOf(view.cx - w / 2 / scale));
    const right = Math.min(180, lonOf(view.cx + w / 2 / scale));
    const top = Math.min(85.0511, latOf(Math.max(0, view.cy - h / 2 / scale)));
    const bottom = Math.max(-85.0511, latOf(Math.min(1, view.cy + h / 2 / scale)));
    const lonStep = niceStep(right - left, Math.max(2, w / 110));
    const latStep = niceStep(top - bottom, Math.max(2, h / 90));
    const grid = el("g", {}, map);
    let d = "";
    const labels = [];
    for (let lon = Math.ceil(left / lonStep) * lonStep; lon <= right; lon += lonStep) {
      const x = sx(worldX(lon));
      d += `M${x.toFixed(1)},${Math.max(0, sy(0)).toFixed(1)}V${Math.min(h, sy(1)).toFixed(1)}`;
      labels.push([x + 3, h - 6, `${lon.toFixed(decimals(lonStep))}°`]);
    }
    for (let lat = Math.ceil(bottom / latStep) * latStep; lat <= top; lat += latStep) {
      const y = sy(worldY(lat));
      d += `M${Math.max(0, sx(0)).toFixed(1)},${y.toFixed(1)}H${Math.min(w, sx(1)).toFixed(1)}`;
      labels.push([52, y - 3, `${lat.toFixed(decimals(latStep))}°`]);
    }
    el("path", { class: "grid", d }, grid);
    for (const [x, y, text] of labels) el("text", { class: "grid-label", x, y }, grid).textContent = text;

    // Tracks, then markers on top.
    const tracks = el("g", {}, map);
    const markers = el("g", {}, map);
    const sorted = [...devices.values()].filter((dv) => dv.doc).sort((a, b) => a.id.localeCompare(b.id));
    for (const device of sorted) {
      if (device.track.length > 1) {
        const points = device.track.map((p) => `${sx(worldX(p.lon)).toFixed(1)},${sy(worldY(p.lat)).toFixed(1)}`);
        el("polyline", { class: "track", points: points.join(" "), stroke: device.color }, tracks);
      }
      const x = sx(worldX(device.lon));
      const y = sy(worldY(device.lat));
      const stale = Date.now() - Date.parse(device.doc.timestamp) > 300000;
      const g = el(
        "g",
        {
          class: `marker${stale ? " stale" : ""}${view.selected === device.id ? " selected" : ""}`,
          transform: `translate(${x.toFixed(1)},${y.toFixed(1)})`,
          "data-device": device.id,
          "data-lat": String(device.lat),
          "data-lon": String(device.lon),
          "data-timestamp": device.doc.timestamp,
        },
        markers,
      );
      const angle = device.doc.angle;
      if (typeof angle === "number") {
        el("path", { class: "heading", d: "M0,-20L6,-8L-6,-8Z", fill: device.color, transform: `rotate(${angle})` }, g);
      }
      el("circle", { r: 7, fill: device.color }, g);
      // The label goes on the side the heading arrow does not point to.
      const east = typeof angle === "number" && ((angle % 360) + 360) % 360 > 30 && ((angle % 360) + 360) % 360 < 150;
      const label = el("text", east ? { x: -12, y: 4, "text-anchor": "end" } : { x: 12, y: 4 }, g);
      label.textContent = device.id;
      el("title", {}, g).textContent = `${device.id} ${device.doc.timestamp}`;
    }
    $("map-note").textContent =
      `${config.tileUrl ? "tiles + " : ""}grid ${lonStep}° × ${latStep}°, zoom ${view.z.toFixed(1)}` +
      (view.auto ? ", auto-fit" : "");
    renderList();
  }

  function renderTiles(map, w, h, sx, sy) {
    const tz = Math.max(0, Math.min(MAX_ZOOM, Math.round(view.z)));
    const n = 2 ** tz;
    const scale = scaleOf(view.z);
    const x0 = Math.floor((view.cx - w / 2 / scale) * n);
    const x1 = Math.floor((view.cx + w / 2 / scale) * n);
    const y0 = Math.max(0, Math.floor((view.cy - h / 2 / scale) * n));
    const y1 = Math.min(n - 1, Math.floor((view.cy + h / 2 / scale) * n));
    if ((x1 - x0 + 1) * (y1 - y0 + 1) > 400) return;
    const g = el("g", {}, map);
    for (let tx = x0; tx <= x1; tx++) {
      if (tx < 0 || tx >= n) continue;
      for (let ty = y0; ty <= y1; ty++) {
        const href = config.tileUrl.replace("{z}", tz).replace("{x}", tx).replace("{y}", ty);
        const size = scale / n;
        const image = el("image", { href, x: sx(tx / n), y: sy(ty / n), width: size + 0.5, height: size + 0.5 }, g);
        image.addEventListener("error", () => image.remove()); // offline: the grid shows through
      }
    }
  }

  function renderList() {
    const body = $("devices").tBodies[0];
    const sorted = [...devices.values()].filter((d) => d.doc).sort((a, b) => a.id.localeCompare(b.id));
    $("empty").hidden = sorted.length > 0;
    const rows = new Map([...body.rows].map((r) => [r.dataset.device, r]));
    for (const device of sorted) {
      let row = rows.get(device.id);
      rows.delete(device.id);
      if (!row) {
        row = document.createElement("tr");
        row.dataset.device = device.id;
        for (const name of ["id", "speed", "heading", "age", "attrs"]) {
          const cell = row.insertCell();
          cell.className = name;
        }
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        row.cells[0].append(swatch, document.createTextNode(device.id));
        swatch.style.background = device.color;
        row.addEventListener("click", () => centerOn(device.id));
      }
      body.appendChild(row); // keeps the order
      const doc = device.doc;
      row.classList.toggle("selected", view.selected === device.id);
      row.cells[1].textContent = typeof doc.speed === "number" ? `${doc.speed} km/h` : "";
      row.cells[2].textContent = typeof doc.angle === "number" ? `${doc.angle}° ${compass(doc.angle)}` : "";
      row.cells[3].textContent = formatAge(doc.timestamp);
      row.cells[3].title = doc.timestamp;
      row.cells[4].textContent = formatAttributes(doc.attributes, 3);
      row.cells[4].title = formatAttributes(doc.attributes, 0);
    }
    for (const row of rows.values()) row.remove();
  }

  function renderAges() {
    for (const row of $("devices").tBodies[0].rows) {
      const device = devices.get(row.dataset.device);
      if (device && device.doc) row.cells[3].textContent = formatAge(device.doc.timestamp);
    }
  }

  function renderSubs() {
    const list = $("subs");
    list.replaceChildren();
    for (const sub of subscriptions.values()) {
      const li = document.createElement("li");
      li.dataset.key = sub.key;
      li.dataset.status = sub.status;
      const name = document.createElement("span");
      name.textContent = `${sub.kind} ${sub.id}`;
      const status = document.createElement("span");
      status.className = "status";
      status.textContent = sub.error ? `${sub.status}: ${sub.error}` : sub.status;
      status.title = sub.cursor ? `resume cursor ${sub.cursor}` : "no cursor yet";
      const remove = document.createElement("button");
      remove.type = "button";
      remove.title = "unsubscribe";
      remove.textContent = "×";
      remove.addEventListener("click", () => removeSubscription(sub.key));
      li.append(name, status, remove);
      list.appendChild(li);
    }
  }

  function centerOn(id) {
    const device = devices.get(id);
    if (!device || !device.doc) return;
    view.selected = view.selected === id ? null : id;
    view.auto = false;
    view.cx = worldX(device.lon);
    view.cy = worldY(device.lat);
    view.z = Math.max(view.z, 13);
    render();
  }

  function zoomAt(factor, px, py) {
    const { w, h } = size();
    const before = scaleOf(view.z);
    const z = Math.max(0, Math.min(MAX_ZOOM, view.z + Math.log2(factor)));
    const after = scaleOf(z);
    // Keep the world point under (px, py) where it is.
    const wx = view.cx + (px - w / 2) / before;
    const wy = view.cy + (py - h / 2) / before;
    view.cx = wx - (px - w / 2) / after;
    view.cy = wy - (py - h / 2) / after;
    view.z = z;
    view.auto = false;
    scheduleRender();
  }

  function setUpMapControls() {
    const map = svg();
    let drag = null;
    map.addEventListener("pointerdown", (e) => {
      drag = { x: e.clientX, y: e.clientY, cx: view.cx, cy: view.cy };
      map.setPointerCapture(e.pointerId);
      map.classList.add("dragging");
    });
    map.addEventListener("pointermove", (e) => {
      if (!drag) return;
      const scale = scaleOf(view.z);
      if (Math.abs(e.clientX - drag.x) + Math.abs(e.clientY - drag.y) < 3 && view.auto) return;
      view.auto = false;
      view.cx = drag.cx - (e.clientX - drag.x) / scale;
      view.cy = drag.cy - (e.clientY - drag.y) / scale;
      scheduleRender();
    });
    const end = () => {
      drag = null;
      map.classList.remove("dragging");
    };
    map.addEventListener("pointerup", end);
    map.addEventListener("pointercancel", end);
    map.addEventListener(
      "wheel",
      (e) => {
        e.preventDefault();
        const rect = map.getBoundingClientRect();
        zoomAt(2 ** (-e.deltaY / 300), e.clientX - rect.left, e.clientY - rect.top);
      },
      { passive: false },
    );
    $("zoom-in").addEventListener("click", () => zoomAt(2, size().w / 2, size().h / 2));
    $("zoom-out").addEventListener("click", () => zoomAt(0.5, size().w / 2, size().h / 2));
    $("fit").addEventListener("click", () => {
      view.auto = true;
      view.selected = null;
      scheduleRender();
    });
    window.addEventListener("resize", scheduleRender);
  }

  // ---- start ----------------------------------------------------------------------------------------

  async function start() {
    try {
      const response = await fetch("/config.json", { cache: "no-store" });
      config = Object.assign(config, await response.json());
    } catch (e) {
      console.warn("trackway: no /config.json, assuming jwt", e);
    }
    state.config = config;
    // ?token=…&group=…&device=… prefill (demos); the token is then taken out of the address bar.
    const params = new URLSearchParams(location.search);
    if (params.get("token")) {
      sessionStorage.setItem(TOKEN_KEY, params.get("token"));
      params.delete("token");
      const rest = params.toString();
      history.replaceState(null, "", location.pathname + (rest ? `?${rest}` : "") + location.hash);
    }
    try {
      for (const [kind, id] of JSON.parse(sessionStorage.getItem(SUBS_KEY) || "[]")) {
        if ((kind === "group" || kind === "device") && typeof id === "string") addSubscription(kind, id);
      }
    } catch (e) {
      sessionStorage.removeItem(SUBS_KEY);
    }
    for (const kind of ["group", "device"]) for (const id of params.getAll(kind)) addSubscription(kind, id);

    $("login").addEventListener("submit", onLogin);
    $("logout").addEventListener("click", onLogout);
    $("subscribe").addEventListener("submit", (e) => {
      e.preventDefault();
      addSubscription($("sub-kind").value, $("sub-id").value.trim());
      $("sub-id").value = "";
    });
    setUpMapControls();
    setInterval(renderAges, 1000);
    setInterval(scheduleRender, 30000); // stale markers
    showLogin();
    renderSubs();
    render();
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
