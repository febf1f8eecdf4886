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
// 4403 (not allowed), a 4401 it cannot cure with a fresh token (see Tokens), or the
// `archived` frame (the stream is over).
//
// Transports. A socket runs on a WebSocket (`/ws/...`) and falls back by itself to
// Server-Sent Events (`/sse/...`, read with fetch(): see below) when WebSockets cannot be
// opened or keep failing: after `fallbackAfter` (2) attempts in a row that fail (the socket
// never opens, never reaches `live`, or is lost within `shortLived` ms of opening) it tries
// the other transport, and so on both ways (a hub that is down is tried on both). While it
// is live on the event stream it probes a WebSocket now and then (`probeInterval`, doubled
// after each failed probe up to `probeMaxInterval`): the probe opens at the cursor and runs
// beside the event stream, both feeding the same cursor (anything at or below the last
// seq/pos is dropped, so each event is delivered once whichever brings it first); when the
// probe reaches `live` it takes over and the event stream is closed. `sock.transport` is
// "websocket" or "sse" (see `Transport`), and a "transport" event tells when it changes.
// `transports: ["websocket"]` turns the fallback off.
//
// Event streams are read with fetch() and a stream reader, not EventSource: the token goes
// in an `Authorization` header (EventSource cannot send headers, so it would have to put the
// token in the URL, where proxies and access logs keep it), a refusal's HTTP status is
// visible (EventSource reports a bare "error" for 401, 403 and a dead network alike), and
// reconnecting is this client's own (same backoff, same cursor, a fresh token). The hub's
// `event: close` (`data: {"code"}`) is handled as the WebSocket close with that code; 401
// counts as 4401, 400 and 403 as 4403, 429 as 4029; a stream silent for `sseTimeout` ms (the
// hub writes at least every 15 s) is dead. Mind that a browser opens at most 6 HTTP/1.1
// connections per host: a page that holds many sockets at once needs HTTP/2 in front of the
// hub for them all to run on event streams.
//
// Tokens. `token` is a string, or a function returning one (or a promise of one), called
// with no arguments when a token is needed: at the start, before the token's `exp` (read from
// the JWT, not verified), and after a 4401. The socket refreshes at 80 % of the token's life
// or 30 s before `exp`, whichever comes first, but not before half its life: on an open
// WebSocket with the `{"type": "auth", "token"}` frame (no reconnect), on an event stream by
// opening a new one at the cursor with the new token and closing the old one once the new
// one is live. A 4401 (or HTTP 401) gets one fresh token and an immediate reconnect; a second
// 4401 in a row (no `live` between them), or any 4401 with a plain string token, ends in the
// `denied` state. A function that throws is retried with the reconnect backoff; one that
// gives nothing newer (it caches) is asked again halfway to `exp`, not in the last 2 s.
// `sock.setToken(t)` hands over a token (or a new function) at once. `sock.refreshes` counts
// the tokens taken without a reconnect, `sock.connects` the connections opened. HubApi and
// hubFetch take the same function (called for each request).
//
// `sock.send(frame)` needs a WebSocket; `sock.sendLocation(lat, lng)` uses POST /api/motion
// while the socket is on an event stream.
//
// Events it dispatches (CustomEvent, payload in `detail`):
//   "event"     an event frame (id, streamId, seq, pos, opcode, name, nodeId, delta, payload, ts)
//   "live"      replay done: {type: "live", seq | pos}
//   "location"  a driver's position: {streamId, driver, lat, lng, ts, etaSeconds?, distanceM?, stop?}
//   "presence"  the driver went silent or is back: {streamId, driver, state, lastSeen}
//   "arriving"  the driver is within 200 m of the drop-off (once): {streamId, driver, distanceM}
//   "archived"  the stream was archived (the socket then closes for good)
//   "error"     an error frame from the hub: {code, message}
//   "state"     {state, previous, code, reason, attempt, delay, transport, status?}: the
//               connection state changed (`status`: the HTTP status of an event stream's refusal)
//   "transport" {transport, previous, reason}: it moved to the other transport
// Constructor options `onEvent`, `onState`, `onLive`, `onLocation`, `onPresence`,
// `onArriving`, `onArchived`, `onError`, `onTransport` are shortcuts for the same listeners.
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

/** The transports a socket runs on (`sock.transport`). */
export const Transport = Object.freeze({
  WEBSOCKET: "websocket", // /ws/streams/{id}, /ws/inbox
  SSE: "sse", // Server-Sent Events: /sse/streams/{id}, /sse/inbox
});

const DEFAULTS = {
  since: 0,
  base: undefined, // "http(s)://host[:port]" of the hub; default: the page's origin
  token: null, // a string, or a function returning one (or a promise of one)
  minDelay: 500, // ms before the first reconnect attempt (then doubled each time)
  maxDelay: 15000, // ms, cap of the backoff
  pingInterval: 15000, // ms between {"type":"ping"} frames while connected
  pingTimeout: 10000, // ms without any frame after a ping: the connection is dead
  connectTimeout: 10000, // ms for the socket to open (an event stream: for its response)
  transports: [Transport.WEBSOCKET, Transport.SSE], // the preferred first
  fallbackAfter: 2, // failed attempts in a row on one transport before trying the other
  shortLived: 5000, // ms: a connection lost (1006) this soon after it opened has failed
  probeInterval: 10000, // ms live on the fallback before probing the preferred transport
  probeMaxInterval: 120000, // ms, cap of the probe interval (doubled per failed probe)
  sseTimeout: 45000, // ms without a byte on an event stream: it is dead
  WebSocket: undefined, // a WebSocket implementation (default: globalThis.WebSocket)
  fetch: undefined, // a fetch implementation for event streams (default: globalThis.fetch)
};

const ABNORMAL = 1006; // a connection lost without a close frame (the hub never sends it)
const REFRESH_FLOOR = 500; // ms: the least time between two token refreshes
const RETRY_FLOOR = 1000; // ms: the least time between two calls that give nothing newer

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
    this._tokenFn = typeof o.token === "function" ? o.token : null;
    this.token = this._tokenFn ? null : (o.token ?? null); // the token in use
    this.last = Number(o.since) || 0; // last seq (stream) or pos (inbox) delivered
    this.state = State.CLOSED;
    this.attempt = 0; // failed attempts since the last `live`
    this.transport = (o.transports ?? [])[0] ?? Transport.WEBSOCKET;
    this.connects = 0; // connections opened (probes and token handovers included)
    this.refreshes = 0; // tokens taken without a reconnect (`auth` answers, handovers)
    this._kinds = [this.transport]; // the usable transports, the preferred first (start())
    this._main = null; // the connection that delivers: {kind, token, live, ...}
    this._next = null; // one that may take over: a probe, or an event stream's new token
    this._timers = new Set();
    this._retryTimer = null;
    this._probeTimer = null;
    this._refreshTimer = null;
    this._fails = 0; // failed attempts in a row on this.transport
    this._probeFails = 0;
    this._authFails = 0; // 4401s in a row
    this._refused = undefined; // the token of the last 4401
    this._tokenAt = 0; // when this.token was obtained (ms)
    this._tokenPromise = null;
    this._gen = 0; // bumped by each connect and by the end: stale awaits give up
    this._archived = false;
    this._started = false;
    this._onOnline = () => {
      if (this._started && this.state === State.RECONNECTING && !this._main) {
        this._cancel("_retryTimer");
        this._connect();
      }
    };
    const shortcuts = {
      onEvent: "event", onState: "state", onLive: "live", onLocation: "location",
      onPresence: "presence", onArriving: "arriving",
      onArchived: "archived", onError: "error", onTransport: "transport",
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

  /** The WebSocket URL at the cursor, with the token. */
  get url() {
    return this._address(Transport.WEBSOCKET, this.token);
  }

  /** The open WebSocket, or null (on an event stream, or between connections). */
  get ws() {
    const main = this._main;
    return main?.kind === Transport.WEBSOCKET ? main.ws : null;
  }

  /** Open the socket (idempotent). */
  start() {
    if (this._started) return this;
    this._started = true;
    this._archived = false;
    this._kinds = this._usable();
    this.transport = this._kinds[0];
    this._fails = this._probeFails = this._authFails = 0;
    globalThis.addEventListener?.("online", this._onOnline);
    this._setState(State.CONNECTING);
    this._scheduleRefresh();
    this._connect();
    return this;
  }

  /** Close for good (no reconnect). */
  close() {
    this._finish(State.CLOSED, { code: CloseCode.NORMAL, reason: "closed by the app" });
  }

  /**
   * Use another token (a string) or token function from now on: an open connection takes it
   * at once (the `auth` frame, or a new event stream at the cursor).
   */
  setToken(token) {
    if (typeof token === "function") {
      this._tokenFn = token;
      if (this._started) this._fetchToken().then(() => this._syncToken(), () => {});
      return;
    }
    this.token = token ?? null;
    this._tokenAt = Date.now();
    this._scheduleRefresh();
    this._syncToken();
  }

  /** Send a JSON frame; false when no WebSocket is open (frames are not queued). */
  send(frame) {
    const main = this._main;
    return main?.kind === Transport.WEBSOCKET ? main.send(frame) : false;
  }

  /**
   * A driver's position (same effect as POST /api/motion, which it uses on an event stream);
   * false when not connected.
   */
  sendLocation(lat, lng) {
    const frame = { type: "location", lat: Number(lat), lng: Number(lng) };
    if (this.send(frame)) return true;
    const main = this._main;
    if (main?.kind !== Transport.SSE || !main.live) return false;
    hubFetch("/api/motion", {
      method: "POST", body: { lat: frame.lat, lng: frame.lng }, token: this.token, base: this.options.base,
    }).catch((err) => this._emit("error", { code: err?.code ?? "motion", message: err?.message ?? String(err) }));
    return true;
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
    this._emit("state", { state, previous, attempt: this.attempt, transport: this.transport, ...extra });
  }

  _switch(transport, reason) {
    this._fails = 0;
    const previous = this.transport;
    if (previous === transport) return;
    this.transport = transport;
    this._emit("transport", { transport, previous, reason });
  }

  _usable() {
    const o = this.options;
    const has = {
      [Transport.WEBSOCKET]: typeof (o.WebSocket ?? globalThis.WebSocket) === "function",
      [Transport.SSE]: typeof (o.fetch ?? globalThis.fetch) === "function"
        && typeof globalThis.TextDecoder === "function" && typeof globalThis.AbortController === "function",
    };
    const kinds = [...new Set(o.transports ?? [])].filter((k) => has[k]);
    return kinds.length ? kinds : [(o.transports ?? [])[0] ?? Transport.WEBSOCKET];
  }

  _address(transport, token) {
    const base = new URL(this.options.base ?? globalThis.location?.href ?? "http://localhost/");
    const root = transport === Transport.SSE ? "/sse" : "/ws";
    if (transport !== Transport.SSE) base.protocol = base.protocol === "https:" ? "wss:" : "ws:";
    const path = this.kind === "stream"
      ? `${root}/streams/${encodeURIComponent(this.streamId)}`
      : `${root}/inbox`;
    const url = new URL(path, base);
    url.searchParams.set("since", String(this.last));
    if (token) url.searchParams.set("token", token);
    return url.toString();
  }

  _later(fn, ms) {
    const id = setTimeout(() => {
      this._timers.delete(id);
      fn();
    }, ms);
    this._timers.add(id);
    return id;
  }

  _cancel(name) {
    const id = this[name];
    if (id !== null) {
      clearTimeout(id);
      this._timers.delete(id);
      this[name] = null;
    }
  }

  _clearTimers() {
    for (const id of this._timers) clearTimeout(id);
    this._timers.clear();
    this._retryTimer = this._probeTimer = this._refreshTimer = null;
  }

  // End for good: no connection, no timer, no reconnect.
  _finish(state, extra) {
    this._started = false;
    this._gen++;
    globalThis.removeEventListener?.("online", this._onOnline);
    const conns = [this._main, this._next];
    this._main = this._next = null;
    for (const conn of conns) if (conn) this._shut(conn);
    this._clearTimers();
    this._setState(state, extra);
  }

  _backoff() {
    const n = this.attempt++;
    const cap = Math.min(this.options.maxDelay, this.options.minDelay * 2 ** Math.min(n, 30));
    return Math.round(cap / 2 + Math.random() * (cap / 2)); // "equal jitter"
  }

  _retry(code, reason, delay, extra = {}) {
    this._setState(State.RECONNECTING, { code, reason, delay, ...extra });
    this._cancel("_retryTimer");
    this._retryTimer = this._later(() => {
      this._retryTimer = null;
      this._connect();
    }, delay);
  }

  async _connect() {
    if (!this._started || this._main) return;
    const gen = ++this._gen;
    let token;
    try {
      token = await this._token(this.token === this._refused && this._refused !== undefined);
    } catch (err) {
      if (gen !== this._gen || !this._started) return;
      this._retry(ABNORMAL, `no token: ${err?.message ?? err}`, this._backoff());
      return;
    }
    if (gen !== this._gen || !this._started || this._main) return;
    try {
      this._main = this._open(this.transport, token);
    } catch (err) { // a `base` that is not a URL, say
      this._retry(ABNORMAL, String(err?.message ?? err), this._backoff());
    }
  }

  // -- connections -------------------------------------------------------------------
  //
  // A connection is {kind, token, live, openedAt, dead, timers, send(), shut()}: `token` is
  // the one the hub holds for it. Its frames go to _frame(conn, ...), its end to _end(conn, ...);
  // nothing of a connection that is shut (`dead`) is heard again.

  _open(kind, token) {
    const conn = {
      kind, token, live: false, openedAt: 0, heardAt: 0, dead: false, timers: new Set(),
      pinger: null, deadTimer: null, send: () => false, shut: () => {},
    };
    this.connects += 1;
    if (kind === Transport.SSE) this._openSse(conn);
    else this._openWs(conn);
    return conn;
  }

  _after(conn, ms, fn) {
    const id = setTimeout(() => {
      conn.timers.delete(id);
      if (!conn.dead) fn();
    }, ms);
    conn.timers.add(id);
    return id;
  }

  _shut(conn) {
    if (conn.dead) return;
    conn.dead = true;
    for (const id of conn.timers) clearTimeout(id);
    conn.timers.clear();
    clearInterval(conn.pinger);
    conn.shut();
  }

  // The connection ended (closed, refused, lost): forget it, then react.
  _end(conn, code, reason = "", status = undefined) {
    if (conn.dead) return;
    this._shut(conn);
    if (conn === this._main) this._mainEnded(conn, code, reason, status);
    else if (conn === this._next) this._nextEnded(conn, code);
  }

  // The transport is open (a WebSocket's open, an event stream's 200).
  _opened(conn) {
    conn.openedAt = Date.now();
    conn.heardAt = conn.openedAt;
    this._syncToken();
  }

  _heard(conn) {
    conn.heardAt = Date.now();
    if (conn.deadTimer !== null) {
      clearTimeout(conn.deadTimer);
      conn.timers.delete(conn.deadTimer);
      conn.deadTimer = null;
    }
  }

  _openWs(conn) {
    const Impl = this.options.WebSocket ?? globalThis.WebSocket;
    let ws;
    try {
      ws = new Impl(this._address(Transport.WEBSOCKET, conn.token));
    } catch (err) {
      this._after(conn, 0, () => this._end(conn, ABNORMAL, String(err?.message ?? err)));
      return;
    }
    conn.ws = ws;
    conn.send = (frame) => {
      if (conn.dead || ws.readyState !== 1) return false;
      ws.send(typeof frame === "string" ? frame : JSON.stringify(frame));
      return true;
    };
    conn.shut = () => {
      ws.onopen = ws.onmessage = ws.onerror = ws.onclose = null;
      try {
        if (ws.readyState <= 1) ws.close(CloseCode.NORMAL);
      } catch {
        // closing an already dead socket
      }
    };
    const openTimer = this._after(conn, this.options.connectTimeout, () => {
      if (!conn.openedAt) this._end(conn, ABNORMAL, "connect timeout");
    });
    ws.onopen = () => {
      if (conn.dead) return;
      clearTimeout(openTimer);
      conn.timers.delete(openTimer);
      this._startPings(conn);
      this._opened(conn);
    };
    ws.onmessage = (msg) => {
      if (conn.dead) return;
      this._heard(conn);
      let frame;
      try {
        frame = JSON.parse(msg.data);
      } catch {
        return;
      }
      this._frame(conn, frame);
    };
    ws.onerror = () => {}; // a close follows; the browser already reports the failure
    ws.onclose = (ev) => {
      if (!conn.dead) this._end(conn, ev.code, ev.reason);
    };
  }

  _startPings(conn) {
    const { pingInterval, pingTimeout } = this.options;
    conn.pinger = setInterval(() => {
      if (conn.dead || !conn.send('{"type":"ping"}')) return;
      if (conn.deadTimer === null) {
        conn.deadTimer = this._after(conn, pingTimeout, () => this._end(conn, ABNORMAL, "no answer to ping"));
      }
    }, pingInterval);
  }

  _openSse(conn) {
    const ctrl = new AbortController();
    conn.shut = () => ctrl.abort();
    this._after(conn, this.options.connectTimeout, () => {
      if (!conn.openedAt) this._end(conn, ABNORMAL, "connect timeout");
    });
    this._readSse(conn, ctrl.signal).catch((err) => {
      if (!conn.dead) this._end(conn, ABNORMAL, `event stream failed: ${err?.message ?? err}`);
    });
  }

  async _readSse(conn, signal) {
    const fetchImpl = this.options.fetch ?? globalThis.fetch;
    const headers = { accept: "text/event-stream" };
    if (conn.token) headers.authorization = `Bearer ${conn.token}`;
    const res = await fetchImpl.call(globalThis, this._address(Transport.SSE, null), {
      headers, signal, cache: "no-store",
    });
    if (conn.dead) return;
    if (res.status !== 200) {
      let reason = `HTTP ${res.status}`;
      try {
        const body = await res.json();
        reason = body?.error?.message ?? reason;
      } catch {
        // not the hub's error body
      }
      this._end(conn, httpClose(res.status), reason, res.status);
      return;
    }
    if (!String(res.headers.get("content-type")).startsWith("text/event-stream") || !res.body?.getReader) {
      this._end(conn, ABNORMAL, "not an event stream");
      return;
    }
    const reader = res.body.getReader();
    this._opened(conn);
    this._watchSilence(conn);
    const decoder = new TextDecoder();
    const parse = sseParser((event, data) => this._sseMessage(conn, event, data));
    for (;;) {
      const { done, value } = await reader.read();
      if (conn.dead) {
        reader.cancel().catch(() => {});
        return;
      }
      if (done) {
        this._end(conn, ABNORMAL, "the event stream ended");
        return;
      }
      this._heard(conn);
      parse(decoder.decode(value, { stream: true }));
    }
  }

  _watchSilence(conn) {
    const limit = this.options.sseTimeout;
    const left = conn.heardAt + limit - Date.now();
    if (left <= 0) this._end(conn, ABNORMAL, `nothing heard for ${Math.round(limit / 1000)} s`);
    else this._after(conn, left, () => this._watchSilence(conn));
  }

  _sseMessage(conn, event, data) {
    if (conn.dead) return;
    if (event === "close") {
      let code = ABNORMAL;
      try {
        code = Number(JSON.parse(data).code) || ABNORMAL;
      } catch {
        // a close without a code
      }
      this._end(conn, code, "");
      return;
    }
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame && typeof frame === "object" && !frame.type) frame.type = event;
    this._frame(conn, frame);
  }

  // -- frames --------------------------------------------------------------------------

  _frame(conn, frame) {
    const main = conn === this._main;
    switch (frame?.type) {
      case "event": {
        // From the main connection and from one about to take over alike: each is ordered
        // and complete from its cursor on, so "newer than the last one delivered" takes
        // every event once, in order, whichever connection brings it first.
        const key = Number(frame[this.key]);
        if (!Number.isFinite(key) || key <= this.last) return; // already delivered
        this.last = key;
        const { type: _type, ...event } = frame;
        this._emit("event", event);
        return;
      }
      case "live":
        if (conn === this._next) {
          this._promote(conn, frame);
          return;
        }
        if (!main) return;
        conn.live = true;
        this.attempt = 0;
        this._authFails = 0;
        this._setState(State.LIVE, { last: this.last });
        this._emit("live", frame);
        this._scheduleProbe();
        return;
      case "location":
      case "presence":
      case "arriving":
        if (main) this._emit(frame.type, frame);
        return;
      case "archived":
        // Every event before it has been delivered (by this connection or the other one).
        if (this._archived) return;
        this._archived = true;
        this._emit("archived", frame);
        this._finish(State.CLOSED, { code: CloseCode.NORMAL, reason: "archived", archived: true });
        return;
      case "auth":
        this._authFails = 0;
        this.refreshes += 1;
        return;
      case "error":
        if (main) this._emit("error", frame.error ?? frame);
        return;
      case "pong":
      default:
        return;
    }
  }

  // -- ends, fallback, probes ----------------------------------------------------------

  _mainEnded(conn, code, reason, status) {
    this._main = null;
    this._dropNext();
    this._cancel("_probeTimer");
    if (!this._started) return;
    const extra = status === undefined ? {} : { status };
    if (code === CloseCode.FORBIDDEN) {
      this._finish(State.DENIED, { code, reason: reason || "not allowed", ...extra });
      return;
    }
    if (code === CloseCode.UNAUTHORIZED) {
      if (this._tokenFn && this._authFails === 0) {
        this._authFails = 1;
        this._refused = conn.token; // _connect asks for a fresh one unless one came since
        this._retry(code, reason || "token expired or refused", 0, extra);
        return;
      }
      this._finish(State.DENIED, { code, reason: reason || "not authenticated", ...extra });
      return;
    }
    const lost = code === ABNORMAL && Date.now() - conn.openedAt < this.options.shortLived;
    if (!conn.live || lost) {
      this._fails += 1;
      const other = this._kinds.find((k) => k !== conn.kind);
      if (other && conn.kind === this.transport && this._fails >= this.options.fallbackAfter) {
        this._switch(other, `${conn.kind} failed ${this._fails} times in a row`);
      }
    } else {
      this._fails = 0;
    }
    this._retry(code, reason, this._backoff(), extra);
  }

  _nextEnded(conn, _code) {
    this._next = null;
    if (this._main && conn.kind !== this._main.kind) {
      this._probeFails += 1; // the preferred transport still does not work
      this._scheduleProbe();
      this._syncToken(); // an event stream may still wait for the newer token
    } else {
      // A token handover that failed: try again in a while (the main connection goes on
      // until its token expires; then a 4401 brings a fresh token and a reconnect).
      this._later(() => this._syncToken(), this.options.minDelay * 4);
    }
  }

  _dropNext() {
    const next = this._next;
    this._next = null;
    if (next) this._shut(next);
  }

  // Open a `next` connection: it has twice the connect timeout to reach `live`.
  _openNext(kind) {
    const conn = this._open(kind, this.token);
    this._next = conn;
    this._after(conn, 2 * this.options.connectTimeout, () => {
      if (!conn.live) this._end(conn, ABNORMAL, "not live in time");
    });
  }

  // `next` reached `live` at the cursor: it becomes the main connection.
  _promote(conn, frame) {
    const old = this._main;
    this._next = null;
    this._main = conn;
    if (old) this._shut(old);
    conn.live = true;
    this.attempt = 0;
    this._authFails = 0;
    this._cancel("_retryTimer");
    if (conn.kind === this._kinds[0]) {
      this._probeFails = 0;
      this._cancel("_probeTimer");
    }
    if (conn.kind !== this.transport) this._switch(conn.kind, `${conn.kind} works again`);
    else if (old && old.kind === conn.kind) this.refreshes += 1; // an event stream's new token
    this._fails = 0;
    if (this.state !== State.LIVE) {
      this._setState(State.LIVE, { last: this.last });
      this._emit("live", frame);
    }
    this._syncToken();
    this._scheduleProbe();
  }

  _scheduleProbe() {
    const main = this._main;
    if (this._probeTimer !== null || !this._started || !main?.live || main.kind === this._kinds[0]) return;
    const { probeInterval, probeMaxInterval } = this.options;
    const delay = Math.min(probeMaxInterval, probeInterval * 2 ** Math.min(this._probeFails, 20));
    this._probeTimer = this._later(() => {
      this._probeTimer = null;
      this._probe();
    }, delay);
  }

  _probe() {
    const main = this._main;
    const preferred = this._kinds[0];
    if (!this._started || !main?.live || main.kind === preferred) return;
    if (this._next) {
      this._scheduleProbe(); // a token handover is under way: after it
      return;
    }
    this._openNext(preferred);
  }

  // -- tokens --------------------------------------------------------------------------

  // {exp, refreshAt} of this.token (ms), or null when it does not expire.
  _timing() {
    const c = claims(this.token);
    const exp = typeof c?.exp === "number" ? c.exp * 1000 : null;
    if (exp === null) return null;
    const start = typeof c.iat === "number" ? c.iat * 1000 : this._tokenAt;
    const life = Math.max(0, exp - start);
    // 80 % of the life or 30 s before exp, whichever is first, but not before half of it.
    const lead = Math.min(life / 2, Math.max(life / 5, 30000));
    return { exp, refreshAt: exp - lead };
  }

  async _token(force) {
    if (!this._tokenFn) return this.token;
    const t = this._timing();
    if (!force && this.token && !(t && Date.now() >= t.refreshAt)) return this.token;
    return this._fetchToken();
  }

  // Call the token function (one call at a time); resolves to the new token.
  _fetchToken() {
    if (!this._tokenPromise) {
      const p = (async () => {
        const token = await this._tokenFn();
        if (typeof token !== "string" || !token) throw new Error("the token function returned no token");
        const before = this.token;
        const exp = (t) => claims(t)?.exp ?? Infinity;
        // Nothing newer (a function that caches): ask again later, not at once.
        const stale = before !== null && (token === before || exp(token) <= exp(before));
        if (token !== before) {
          this.token = token;
          this._tokenAt = Date.now();
        }
        this._scheduleRefresh(stale);
        return token;
      })();
      this._tokenPromise = p;
      p.finally(() => {
        if (this._tokenPromise === p) this._tokenPromise = null;
      }).catch(() => {});
    }
    return this._tokenPromise;
  }

  // Refresh at the token's time; after a call that gave nothing newer (`stale`), halfway to
  // its exp, and not at all in its last 2 s (past its exp, a 4401 brings one more call).
  _scheduleRefresh(stale = false) {
    this._cancel("_refreshTimer");
    if (!this._tokenFn || !this._started) return;
    const t = this._timing();
    if (!t) return;
    const now = Date.now();
    let delay = Math.max(REFRESH_FLOOR, t.refreshAt - now);
    if (stale) {
      delay = Math.max(delay, (t.exp - now) / 2);
      if (t.exp - now < 2 * RETRY_FLOOR) return;
    }
    this._refreshTimer = this._later(() => {
      this._refreshTimer = null;
      this._refresh();
    }, delay);
  }

  async _refresh() {
    if (!this._started) return;
    try {
      await this._fetchToken();
    } catch {
      if (!this._started) return;
      const t = this._timing();
      const left = t ? t.exp - Date.now() : 0;
      if (left > 0 && this._refreshTimer === null) {
        // Again while the token lives; past its exp, a 4401 brings one more try.
        this._refreshTimer = this._later(() => {
          this._refreshTimer = null;
          this._refresh();
        }, Math.max(REFRESH_FLOOR, Math.min(5000, left / 2)));
      }
      return;
    }
    this._syncToken();
  }

  // Give this.token to the connections that hold an older one: the `auth` frame on an open
  // WebSocket (one still opening gets it once open), a new event stream at the cursor for one
  // on an event stream (it takes over once live).
  _syncToken() {
    if (!this._started) return;
    const token = this.token;
    for (const conn of [this._main, this._next]) {
      if (!conn || conn.dead || conn.token === token) continue;
      if (conn.kind === Transport.WEBSOCKET) {
        if (conn.openedAt && conn.send({ type: "auth", token })) conn.token = token;
      } else if (conn === this._next) {
        this._dropNext();
        this._openNext(Transport.SSE);
      } else if (!this._next) {
        this._openNext(Transport.SSE);
      }
    }
  }
}

/** The close code an event stream's refusal stands for (the WebSocket's, see _admit). */
function httpClose(status) {
  if (status === 401) return CloseCode.UNAUTHORIZED;
  if (status === 400 || status === 403) return CloseCode.FORBIDDEN;
  if (status === 429) return CloseCode.TOO_MANY;
  return ABNORMAL; // 404 (a hub without event streams), 5xx, a proxy's page: try again
}

/**
 * A `text/event-stream` parser: feed it text as it comes; it calls `dispatch(event, data)`
 * for each message (comments, `id:` and `retry:` are not needed: frames carry their cursor).
 */
function sseParser(dispatch) {
  let buffer = "";
  let event = "";
  let data = [];
  return (text) => {
    buffer += text;
    const lines = buffer.split(/\r\n|\r(?!$)|\n/); // a final "\r" may be half of "\r\n"
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (data.length) dispatch(event || "message", data.join("\n"));
        event = "";
        data = [];
        continue;
      }
      if (line[0] === ":") continue; // a comment: the keepalive
      const i = line.indexOf(":");
      const field = i < 0 ? line : line.slice(0, i);
      let value = i < 0 ? "" : line.slice(i + 1);
      if (value[0] === " ") value = value.slice(1);
      if (field === "event") event = value;
      else if (field === "data") data.push(value);
    }
  };
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
 * Fetch JSON from the hub with the token (a string, or a function returning one or a promise
 * of one); resolves to the parsed body or throws a HubError carrying the hub's
 * `{"error": {"code", "message"}}`.
 */
export async function hubFetch(path, { token, method = "GET", body, base, signal } = {}) {
  if (typeof token === "function") {
    try {
      token = await token();
    } catch (err) {
      throw new HubError(0, "token", `no token (${err?.message ?? err})`);
    }
  }
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

/**
 * The HTTP API with one token (a string, or a function returning one, as HubSocket takes):
 * `api.get("/api/orders/ord-1")`, `api.post(path, body)`.
 */
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

/** A JWT's claims, not verified (the hub verifies); null when it is not a JWT. */
function claims(token) {
  try {
    const part = String(token).split(".")[1];
    const json = atob(part.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(part.length / 4) * 4, "="));
    const value = JSON.parse(json);
    return value && typeof value === "object" ? value : null;
  } catch {
    return null;
  }
}

/**
 * What a token says about itself (not verified: the hub verifies): {sub, role, exp, iat,
 * expired}, or null when it is not a JWT.
 */
export function tokenInfo(token) {
  const c = claims(token);
  if (!c) return null;
  const exp = typeof c.exp === "number" ? c.exp : null;
  return {
    sub: c.sub ?? null,
    role: c.role ?? null,
    exp,
    iat: typeof c.iat === "number" ? c.iat : null,
    expired: exp !== null && exp * 1000 <= Date.now(),
  };
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
