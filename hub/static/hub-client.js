// hub-client.js: a browser client for the hub. ES module, no dependencies, no build step.
//
//   import { HubSocket, HubApi } from "/hub-client.js";
//   const sock = HubSocket.stream("ord-5001", { token });      // or HubSocket.inbox({ token })
//   sock.addEventListener("event", (e) => console.log(e.detail.seq, e.detail.name));
//   sock.addEventListener("state", (e) => console.log(e.detail.state));
//   sock.start();
//
// A socket delivers every event once and in order: it remembers the last `seq` (stream) or
// `pos` (inbox) it delivered, reconnects after any close (exponential backoff with jitter)
// with `since` set to it, and drops anything at or below it. It does not reconnect after
// 4401 (no or bad token), 4403 (not allowed) or the 1000 that follows an `archived` frame.
//
// Events it dispatches (CustomEvent, payload in `detail`):
//   "event"     an event frame (id, streamId, seq, pos, opcode, name, nodeId, delta, payload, ts)
//   "live"      replay done: {type: "live", seq | pos}
//   "location"  a driver's position: {streamId, driver, lat, lng, ts}
//   "archived"  the stream was archived (the socket then closes for good)
//   "error"     an error frame from the hub: {code, message}
//   "state"     {state, previous, code, reason, attempt, delay}: the connection state changed
// Constructor options `onEvent`, `onState`, `onLive`, `onLocation`, `onArchived`, `onError`
// are shortcuts for the same listeners.
//
// Close codes, opcodes and order statuses come from ./hub-constants.js, which the hub
// generates from its Python definitions (`python -m hub.edge.constants`); they are
// re-exported here.

import { CloseCode, ORDER_STATUS, Opcode, RECONNECT_CODES, STATUS_ORDER } from "./hub-constants.js";

export { CloseCode, ORDER_STATUS, Opcode, RECONNECT_CODES, STATUS_ORDER };

/** Connection states, in the order a healthy socket goes through them. */
export const State = Object.freeze({
  CONNECTING: "connecting", // first attempt, until the hub's `live` frame
  LIVE: "live", // replay done, receiving new events as they are committed
  RECONNECTING: "reconnecting", // lost; waiting (backoff) or retrying
  DENIED: "denied", // 4401 or 4403: a new token is needed; no retry
  CLOSED: "closed", // closed by the app, or the stream was archived; no retry
});

const DEFAULTS = {
  since: 0,
  base: undefined, // "http(s)://host[:port]" of the hub; default: the page's origin
  minDelay: 500, // ms before the first reconnect attempt (then doubled each time)
  maxDelay: 15000, // ms, cap of the backoff
  pingInterval: 15000, // ms between {"type":"ping"} frames while connected
  pingTimeout: 10000, // ms without any frame after a ping: the connection is dead
  connectTimeout: 10000, // ms for the socket to open
  WebSocket: undefined, // a WebSocket implementation (default: globalThis.WebSocket)
};

/** A self-healing subscription to one stream (by seq) or to a tenant's inbox (by pos). */
export class HubSocket extends EventTarget {
  /** A stream's socket: `/ws/streams/{streamId}?since=N&token=T`. */
  static stream(streamId, options = {}) {
    return new HubSocket({ ...options, streamId });
  }

  /** A tenant's inbox socket: `/ws/inbox?since=P&token=T`. */
  static inbox(options = {}) {
    return new HubSocket({ ...options, streamId: null });
  }

  constructor(options = {}) {
    super();
    const o = { ...DEFAULTS, ...options };
    this.options = o;
    this.streamId = o.streamId ?? null;
    this.kind = this.streamId === null ? "inbox" : "stream";
    this.token = o.token ?? null;
    this.last = Number(o.since) || 0; // last seq (stream) or pos (inbox) delivered
    this.state = State.CLOSED;
    this.attempt = 0; // failed attempts since the last `live`
    this.ws = null;
    this._timers = new Set();
    this._pingTimer = null;
    this._deadTimer = null;
    this._archived = false;
    this._started = false;
    this._onOnline = () => {
      if (this.state === State.RECONNECTING && !this.ws) this._connect();
    };
    const shortcuts = {
      onEvent: "event", onState: "state", onLive: "live", onLocation: "location",
      onArchived: "archived", onError: "error",
    };
    for (const [opt, type] of Object.entries(shortcuts)) {
      if (typeof o[opt] === "function") this.on(type, o[opt]);
    }
  }

  /** `sock.on("event", (detail) => ...)`: a listener that gets the detail; chainable. */
  on(type, fn) {
    this.addEventListener(type, (e) => fn(e.detail, e));
    return this;
  }

  /** The key that orders this socket's events: `seq` for a stream, `pos` for an inbox. */
  get key() {
    return this.kind === "stream" ? "seq" : "pos";
  }

  get url() {
    const base = new URL(this.options.base ?? globalThis.location?.href ?? "http://localhost/");
    base.protocol = base.protocol === "https:" ? "wss:" : "ws:";
    const path = this.kind === "stream"
      ? `/ws/streams/${encodeURIComponent(this.streamId)}`
      : "/ws/inbox";
    const url = new URL(path, base);
    url.searchParams.set("since", String(this.last));
    if (this.token) url.searchParams.set("token", this.token);
    return url.toString();
  }

  /** Open the socket (idempotent). */
  start() {
    if (this._started) return this;
    this._started = true;
    globalThis.addEventListener?.("online", this._onOnline);
    this._setState(State.CONNECTING);
    this._connect();
    return this;
  }

  /** Close for good (no reconnect). */
  close() {
    this._started = false;
    globalThis.removeEventListener?.("online", this._onOnline);
    this._clearTimers();
    this._drop(CloseCode.NORMAL, "closed by the app");
    this._setState(State.CLOSED, { code: CloseCode.NORMAL, reason: "closed by the app" });
  }

  /** Send a JSON frame; false when not connected (frames are not queued). */
  send(frame) {
    const ws = this.ws;
    if (!ws || ws.readyState !== 1) return false;
    ws.send(JSON.stringify(frame));
    return true;
  }

  /** A driver's position (same effect as POST /api/motion). */
  sendLocation(lat, lng) {
    return this.send({ type: "location", lat: Number(lat), lng: Number(lng) });
  }

  ping() {
    return this.send({ type: "ping" });
  }

  // -- internals ---------------------------------------------------------------------

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state, extra = {}) {
    const previous = this.state;
    if (previous === state && state !== State.RECONNECTING) return;
    this.state = state;
    this._emit("state", { state, previous, attempt: this.attempt, ...extra });
  }

  _later(fn, ms) {
    const id = setTimeout(() => {
      this._timers.delete(id);
      fn();
    }, ms);
    this._timers.add(id);
    return id;
  }

  _clearTimers() {
    for (const id of this._timers) clearTimeout(id);
    this._timers.clear();
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    this._deadTimer = null;
  }

  _connect() {
    if (!this._started) return;
    const Impl = this.options.WebSocket ?? globalThis.WebSocket;
    let ws;
    try {
      ws = new Impl(this.url);
    } catch (err) {
      this._lost(1006, String(err?.message ?? err));
      return;
    }
    this.ws = ws;
    const openTimer = this._later(() => {
      if (this.ws === ws && ws.readyState !== 1) this._lost(1006, "connect timeout");
    }, this.options.connectTimeout);
    ws.onopen = () => {
      clearTimeout(openTimer);
      this._timers.delete(openTimer);
      this._startPings(ws);
    };
    ws.onmessage = (msg) => {
      if (this.ws !== ws) return;
      this._alive();
      let frame;
      try {
        frame = JSON.parse(msg.data);
      } catch {
        return;
      }
      this._frame(frame);
    };
    ws.onerror = () => {}; // a close follows; the browser already reports the failure
    ws.onclose = (ev) => {
      if (this.ws !== ws) return;
      clearTimeout(openTimer);
      this._timers.delete(openTimer);
      this._closed(ev.code, ev.reason);
    };
  }

  _frame(frame) {
    switch (frame?.type) {
      case "event": {
        const key = Number(frame[this.key]);
        if (!Number.isFinite(key) || key <= this.last) return; // already delivered
        this.last = key;
        const { type: _type, ...event } = frame;
        this._emit("event", event);
        return;
      }
      case "live":
        this.attempt = 0;
        this._setState(State.LIVE, { last: this.last });
        this._emit("live", frame);
        return;
      case "location":
        this._emit("location", frame);
        return;
      case "archived":
        this._archived = true;
        this._emit("archived", frame);
        return;
      case "error":
        this._emit("error", frame.error ?? frame);
        return;
      case "pong":
      default:
        return;
    }
  }

  _startPings(ws) {
    clearInterval(this._pingTimer);
    this._pingTimer = setInterval(() => {
      if (this.ws !== ws || ws.readyState !== 1) return;
      ws.send('{"type":"ping"}');
      if (this._deadTimer === null) {
        this._deadTimer = this._later(() => {
          this._deadTimer = null;
          if (this.ws === ws) this._lost(1006, "no answer to ping");
        }, this.options.pingTimeout);
      }
    }, this.options.pingInterval);
  }

  _alive() {
    if (this._deadTimer !== null) {
      clearTimeout(this._deadTimer);
      this._timers.delete(this._deadTimer);
      this._deadTimer = null;
    }
  }

  // Forget the current socket without waiting for its close event.
  _drop(code, reason) {
    const ws = this.ws;
    this.ws = null;
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    this._alive();
    if (!ws) return;
    ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
    try {
      if (ws.readyState <= 1) ws.close(code === 1006 ? 1000 : code, reason);
    } catch {
      // closing an already dead socket
    }
  }

  _lost(code, reason) {
    this._drop(code, reason);
    this._closed(code, reason);
  }

  _closed(code, reason) {
    this.ws = null;
    clearInterval(this._pingTimer);
    this._pingTimer = null;
    this._alive();
    if (!this._started) return;
    if (code === CloseCode.UNAUTHORIZED || code === CloseCode.FORBIDDEN) {
      this._started = false;
      this._setState(State.DENIED, {
        code,
        reason: reason || (code === CloseCode.UNAUTHORIZED ? "not authenticated" : "not allowed"),
      });
      return;
    }
    if (this._archived && code === CloseCode.NORMAL) {
      this._started = false;
      this._setState(State.CLOSED, { code, reason: reason || "archived", archived: true });
      return;
    }
    const n = this.attempt++;
    const cap = Math.min(this.options.maxDelay, this.options.minDelay * 2 ** n);
    const delay = Math.round(cap / 2 + Math.random() * (cap / 2)); // "equal jitter"
    this._setState(State.RECONNECTING, { code, reason, delay });
    this._later(() => this._connect(), delay);
  }
}

// -- HTTP ----------------------------------------------------------------------------

/** An HTTP error: `status` (0 when the hub was not reached), and the hub's `code`/`message`. */
export class HubError extends Error {
  constructor(status, code, message, body = null) {
    super(message || code || `HTTP ${status}`);
    this.name = "HubError";
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

/**
 * Fetch JSON from the hub with the token; resolves to the parsed body or throws a HubError
 * carrying the hub's `{"error": {"code", "message"}}`.
 */
export async function hubFetch(path, { token, method = "GET", body, base, signal } = {}) {
  const headers = { accept: "application/json" };
  if (token) headers.authorization = `Bearer ${token}`;
  if (body !== undefined) headers["content-type"] = "application/json";
  const url = new URL(path, base ?? globalThis.location?.href ?? "http://localhost/");
  let res;
  try {
    res = await fetch(url, {
      method, headers, signal, body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (err) {
    throw new HubError(0, "network", `the hub cannot be reached (${err?.message ?? err})`);
  }
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) {
    const e = data?.error ?? {};
    throw new HubError(res.status, e.code ?? `http_${res.status}`,
      e.message ?? (text.slice(0, 200) || res.statusText), data);
  }
  return data;
}

/** The HTTP API with one token: `api.get("/api/orders/ord-1")`, `api.post(path, body)`. */
export class HubApi {
  constructor(token, { base } = {}) {
    this.token = token;
    this.base = base;
  }

  get(path, opts = {}) {
    return hubFetch(path, { ...opts, token: this.token, base: this.base });
  }

  post(path, body = {}, opts = {}) {
    return hubFetch(path, { ...opts, method: "POST", body, token: this.token, base: this.base });
  }

  order(id) { return this.get(`/api/orders/${encodeURIComponent(id)}`); }
  stream(id, since = 0) { return this.get(`/api/streams/${encodeURIComponent(id)}?since=${since}`); }
  menu(restaurant) { return this.get(`/api/restaurants/${encodeURIComponent(restaurant)}`); }
  placeOrder(body) { return this.post("/api/orders", body); }
  step(id, step, body = {}) { return this.post(`/api/orders/${encodeURIComponent(id)}/${step}`, body); }
  driverStatus(status, lat, lng) { return this.post("/api/drivers/status", { status, lat, lng }); }
  motion(lat, lng) { return this.post("/api/motion", { lat, lng }); }

  streamSocket(id, options = {}) {
    return HubSocket.stream(id, { base: this.base, ...options, token: this.token });
  }

  inboxSocket(options = {}) {
    return HubSocket.inbox({ base: this.base, ...options, token: this.token });
  }
}

/**
 * What a token says about itself (not verified: the hub verifies): {sub, role, exp, expired},
 * or null when it is not a JWT.
 */
export function tokenInfo(token) {
  try {
    const part = String(token).split(".")[1];
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="));
    const claims = JSON.parse(json);
    const exp = typeof claims.exp === "number" ? claims.exp : null;
    return {
      sub: claims.sub ?? null,
      role: claims.role ?? null,
      exp,
      expired: exp !== null && exp * 1000 <= Date.now(),
    };
  } catch {
    return null;
  }
}

/**
 * The furthest status a list of one order's events reaches, or null when none of them moves
 * an order (a driver's inbox starts at TASK_ASSIGN, so ORDER_CREATE is not required).
 */
export function orderStatus(events) {
  let best = -1;
  for (const e of events) {
    const s = ORDER_STATUS[e.opcode];
    if (s) best = Math.max(best, STATUS_ORDER.indexOf(s));
  }
  return best < 0 ? null : STATUS_ORDER[best];
}
