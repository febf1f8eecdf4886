// Shared pieces of the three apps: tokens from the URL fragment, problem messages, the
// connection pill, small DOM helpers, the order actions (status, cancel and decline, the
// messages for a refused action) and the delivery map: an SVG sketch, or a street map on
// the hub's tiles (HUB_MAP_TILES) with Leaflet, vendored in vendor/leaflet/ and loaded only
// then. No build step.

import { CloseCode, HubApi, ORDER_STATUS, Opcode, STATUS_ORDER, State, hubFetch, tokenInfo } from "./hub-client.js";

// -- tokens ----------------------------------------------------------------------------

/** The URL fragment's parameters (`#token=...&gps=sim`). */
export function fragment() {
  return new URLSearchParams(location.hash.replace(/^#/, ""));
}

/**
 * The page's token: from `#token=` (then kept in sessionStorage under the page's name and
 * removed from the address bar), else from sessionStorage. Returns {token, params, info}.
 */
export function loadToken(page) {
  const params = fragment();
  const key = `hub:token:${page}`;
  let token = params.get("token");
  if (token) {
    try {
      sessionStorage.setItem(key, token);
    } catch {
      // storage disabled: the token lives as long as the page
    }
    params.delete("token");
    const rest = params.toString();
    history.replaceState(history.state, "", location.pathname + location.search + (rest ? `#${rest}` : ""));
  } else {
    try {
      token = sessionStorage.getItem(key);
    } catch {
      token = null;
    }
  }
  return { token: token || null, params, info: token ? tokenInfo(token) : null };
}

/**
 * The page's token as the function hub-client.js asks before each connection and as the
 * token nears its expiry (it refreshes open sockets with it). With `tokenUrl` in the page's
 * address (`#token=…&tokenUrl=https://…`: the platform's or an identity provider's endpoint
 * answering `{"token": …}` or the token as text, credentials included), a fresh token is
 * fetched from it once the current one is in the last fifth of its life, kept for the page
 * (sessionStorage) and shared by all its sockets; without one it is the token the page was
 * opened with, and a socket is refused (4401) at its expiry as before.
 */
export function tokenSource(page, initial, tokenUrl) {
  let current = initial;
  let pending = null;
  const fresh = async () => {
    const res = await fetch(tokenUrl, { credentials: "include", cache: "no-store" });
    if (!res.ok) throw new Error(`the token endpoint answered ${res.status}`);
    const text = (await res.text()).trim();
    let token = text;
    if (text.startsWith("{")) token = JSON.parse(text).token;
    if (typeof token !== "string" || !tokenInfo(token)) throw new Error("the token endpoint sent no token");
    current = token;
    try {
      sessionStorage.setItem(`hub:token:${page}`, token);
    } catch {
      // storage disabled: the token lives as long as the page
    }
    return token;
  };
  return async () => {
    const info = tokenInfo(current);
    if (!tokenUrl || !info?.exp) return current;
    const life = info.iat ? (info.exp - info.iat) * 1000 : 60000;
    if (info.exp * 1000 - Date.now() > life / 5) return current;
    pending ??= fresh().finally(() => { pending = null; });
    try {
      return await pending;
    } catch {
      return current; // the endpoint failed: the current token until it expires
    }
  };
}

export function forgetToken(page) {
  try {
    sessionStorage.removeItem(`hub:token:${page}`);
  } catch {
    // nothing stored
  }
}

// -- DOM -------------------------------------------------------------------------------

/** `h("li", {class: "x", onclick: f}, "text", child)`: an element. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export const $ = (sel, root = document) => root.querySelector(sel);

export function money(amount, currency = "AED") {
  const n = Number(amount);
  return `${Number.isFinite(n) ? n.toFixed(2) : "–"} ${currency}`;
}

export function clock(ts) {
  const d = ts ? new Date(ts) : new Date();
  return d.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
}

let toastTimer = null;
/** A short message at the bottom of the page. */
export function toast(message, kind = "info") {
  let el = $("#toast");
  if (!el) {
    el = h("div", { id: "toast", role: "status", "aria-live": "polite" });
    document.body.append(el);
  }
  el.textContent = message;
  el.dataset.kind = kind;
  el.classList.add("show");
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => el.classList.remove("show"), 4000);
}

// -- problems (missing, expired, invalid or denied token; wrong page) ------------------

let example = "hub token TENANT --role ROLE";
const howToGet = () => [
  "Use a link printed by ", h("code", {}, "hub demo"), ", or make a token with ",
  h("code", {}, example), " and open this page with ", h("code", {}, "#token=…"),
  " at the end of its address.",
];

/**
 * Show a problem prominently. kind: missing | expired | invalid | denied | role | error.
 * `blocking` hides the app (nothing can work without a valid token).
 */
export function showProblem(kind, message, { blocking = true, hint } = {}) {
  const box = $("#problem");
  const titles = {
    missing: "No access token",
    expired: "Your access token has expired",
    invalid: "This access token is not valid",
    denied: "Access denied",
    role: "Wrong kind of token for this page",
    error: "Something went wrong",
  };
  box.replaceChildren(
    h("strong", {}, titles[kind] ?? titles.error),
    h("p", {}, message),
    hint === null ? null : h("p", { class: "hint" }, hint ?? howToGet()),
  );
  box.dataset.problem = kind;
  box.hidden = false;
  if (blocking) {
    const main = $("main");
    if (main) main.hidden = true;
    for (const el of document.querySelectorAll("header.bar button")) el.hidden = true;
    const pill = $("#conn");
    if (pill && pill.dataset.state !== "denied") {
      pill._unbind?.();
      pill.dataset.state = "denied";
      pill.textContent = "no access";
    }
  }
}

export function clearProblem() {
  const box = $("#problem");
  box.hidden = true;
  delete box.dataset.problem;
}

function who(info) {
  return info ? `${info.role ?? "?"} “${info.sub ?? "?"}”` : "this token";
}

/** Turn an HTTP error into a shown problem; returns true when it was an auth problem. */
export function authProblem(err, info, what = "this") {
  if (err?.status === 401) {
    if (err.code === "token_expired" || info?.expired) {
      showProblem("expired", `The hub refused the token (401 ${err.code}): it expired${
        info?.exp ? ` at ${new Date(info.exp * 1000).toLocaleString()}` : ""}.`);
    } else {
      showProblem("invalid", `The hub refused the token (401 ${err.code}): ${err.message}.`);
    }
    return true;
  }
  if (err?.status === 403) {
    showProblem("denied", `The hub refused (403 ${err.code}): ${who(info)} may not see ${what}.`,
      { hint: "Use a token of a tenant that takes part in it." });
    return true;
  }
  return false;
}

/** Show the problem for a socket that ended in the `denied` state (4401 / 4403). */
export function socketProblem(detail, info, what = "this") {
  const { UNAUTHORIZED, FORBIDDEN } = CloseCode;
  if (detail.code === UNAUTHORIZED) {
    // expired now (the page may have opened with a token that was fresh then)
    if (info?.expired || (info?.exp && info.exp * 1000 <= Date.now() + 2000)) showProblem("expired", `The hub closed the connection (${UNAUTHORIZED}): the token has expired.`);
    else showProblem("invalid", `The hub closed the connection (${UNAUTHORIZED}): it does not accept this token.`);
  } else {
    showProblem("denied", `The hub closed the connection (${FORBIDDEN}): ${who(info)} may not see ${what}.`,
      { hint: "Use a token of a tenant that takes part in it." });
  }
}

/**
 * The page's start: a token of one of `roles`, else a problem is shown and null returned.
 * `exampleCommand` tells how to make one. Returns {token, tokens (the page's token
 * function: tokenSource), info, params, api}.
 */
export function startPage(page, roles, roleName, exampleCommand) {
  if (exampleCommand) example = exampleCommand;
  const { token, params, info } = loadToken(page);
  if (!token) {
    showProblem("missing", `This page needs a ${roleName} token in its address (…/${page}.html#token=…).`);
    return null;
  }
  if (!info) {
    showProblem("invalid", "The token in the address is not a JWT (it may have been cut short when copied).");
    return null;
  }
  if (info.expired) {
    showProblem("expired", `The token for ${who(info)} expired at ${new Date(info.exp * 1000).toLocaleString()}.`);
    return null;
  }
  if (!roles.includes(info.role)) {
    showProblem("role", `This page needs a ${roleName} token, but this one is for ${who(info)}.`);
    return null;
  }
  const tenant = $("#tenant");
  if (tenant) tenant.textContent = info.sub;
  const tokens = tokenSource(page, token, params.get("tokenUrl"));
  return { token, tokens, info, params, api: new HubApi(tokens) };
}

// -- order actions --------------------------------------------------------------------

/**
 * An order's status from its events (in stream order): the furthest step reached, except
 * that an ORDER_CANCEL makes it "cancelled" and a TASK_UNASSIGN takes "assigned" back to
 * "ready" until the next TASK_ASSIGN. null when no event tells a status.
 */
export function statusOf(events) {
  let best = -1;
  let driver = false;
  let cancelled = false;
  for (const e of events) {
    if (e.opcode === Opcode.ORDER_CANCEL) cancelled = true;
    else if (e.opcode === Opcode.TASK_ASSIGN) driver = true;
    else if (e.opcode === Opcode.TASK_UNASSIGN) driver = false;
    const s = ORDER_STATUS[e.opcode];
    if (!s || s === "assigned" || s === "cancelled" || !STATUS_ORDER.includes(s)) continue;
    best = Math.max(best, STATUS_ORDER.indexOf(s));
  }
  if (cancelled) return "cancelled";
  const assigned = STATUS_ORDER.indexOf("assigned");
  if (driver && best < assigned) return "assigned";
  return best < 0 ? null : STATUS_ORDER[best];
}

/** The statuses in which each party may cancel an order (docs/protocol.md §6). */
export const CANCEL_WHILE = Object.freeze({
  customer: Object.freeze(["placed", "paid"]),
  restaurant: Object.freeze(["placed", "paid", "preparing"]),
});

/**
 * Whether the caller may take `action` now: its role's rule on the status the page knows,
 * and, once the hub's order details carry them, the details' `actions` too (so a button is
 * gone as soon as either says no).
 */
export function allowed(action, role, status, details) {
  const local = {
    cancel: (CANCEL_WHILE[role] ?? []).includes(status),
    decline: role === "driver" && status === "assigned",
  }[action] ?? true;
  const remote = Array.isArray(details?.actions) ? details.actions.includes(action) : true;
  return local && remote;
}

const orderPath = (id, step) => `/api/orders/${encodeURIComponent(id)}/${step}`;

/** `POST /api/orders/{id}/cancel`, with the reason when one is given. */
export function cancelOrder(api, id, reason) {
  return api.post(orderPath(id, "cancel"), reason ? { reason } : {});
}

/** `POST /api/orders/{id}/decline` (the assigned driver, before pickup). */
export function declineOrder(api, id, reason) {
  return api.post(orderPath(id, "decline"), reason ? { reason } : {});
}

/** `PUT /api/restaurants/{tenant}/menu/{productId}`: a partial update of a product. */
export function putProduct(api, tenant, productId, body) {
  const path = `/api/restaurants/${encodeURIComponent(tenant)}/menu/${encodeURIComponent(productId)}`;
  return hubFetch(path, { method: "PUT", body, token: api.token, base: api.base });
}

/** `POST /api/restaurants/{tenant}/status`: open or close the restaurant. */
export function setOpen(api, tenant, open) {
  return api.post(`/api/restaurants/${encodeURIComponent(tenant)}/status`, { open });
}

const WHERE_NOW = {
  paid: "The order is already paid",
  preparing: "The kitchen has already accepted the order",
  ready: "The order is already ready",
  assigned: "A driver is already on the way for the order",
  picked_up: "The order was already picked up",
  delivered: "The order was already delivered",
  cancelled: "The order was already cancelled",
};
const DONE_AS = {
  cancel: "cancelled", reject: "rejected", decline: "declined", accept: "accepted", ready: "marked ready",
  pickup: "picked up", deliver: "marked delivered", pay: "paid",
};
const TO_DO = {
  cancel: "cancel the order", reject: "reject the order", decline: "decline the delivery",
  accept: "accept the order", ready: "mark the order ready", pickup: "confirm the pickup",
  deliver: "confirm the delivery", pay: "pay for the order",
};

/**
 * A clear sentence for an action the hub refused. `before` is the status the page showed
 * when the action was asked for, `now` the order's status after the refusal (when known):
 * an order that moved on meanwhile (a race with another step) is said so.
 */
export function refusalText(err, action, before = null, now = null) {
  const todo = TO_DO[action] ?? action;
  if (err?.status === 0) return `The hub cannot be reached, so nothing was changed. Check the connection and try again to ${todo}.`;
  if (err?.status === 409 && now && now !== before) {
    if (now === "cancelled" && (action === "cancel" || action === "reject")) return `${WHERE_NOW.cancelled}.`;
    if (now === "placed") return `The order is not paid yet, so it cannot be ${DONE_AS[action] ?? "changed"} now.`;
    if (WHERE_NOW[now]) return `${WHERE_NOW[now]} — it can no longer be ${DONE_AS[action] ?? "changed"}.`;
  }
  if (err?.code === "too_far") return `Not delivered: ${err.message}. Confirm the delivery at the drop-off.`;
  if (err?.status === 403) return `You may not ${todo} (${err.message}).`;
  if (err?.status === 409) return `The hub did not let you ${todo}: ${err.message}.`;
  return `Could not ${todo}: ${err?.message ?? err}.`;
}

/**
 * After an action on an order failed: the order's details as they are now (for the message
 * and the buttons), or null when they cannot be read (e.g. 403: no longer one's order).
 */
export async function afterRefusal(api, id, err) {
  if (err?.status !== 409) return null;
  try {
    return await api.order(id);
  } catch {
    return null;
  }
}

/** Show `text` in the message box `el` (kind: error | ok | info); no text hides it. */
export function notice(el, text, kind = "error") {
  if (!el) return;
  el.textContent = text ?? "";
  el.dataset.kind = kind;
  el.hidden = !text;
}

/**
 * A modal that asks for an optional reason: resolves to the reason ("" when none was
 * typed), or null when the user backs out (the "keep" button or Escape).
 */
export function askReason({ title, text, confirm, keep = "Keep it", placeholder = "optional", suggestions = [] }) {
  return new Promise((resolve) => {
    $("#ask")?.close();
    $("#ask")?.remove();
    const list = suggestions.length ? h("datalist", { id: "ask-suggestions" }, suggestions.map((s) => h("option", { value: s }))) : null;
    const input = h("input", {
      id: "ask-reason", name: "reason", maxlength: "200", placeholder, autocomplete: "off",
      list: list ? "ask-suggestions" : null,
    });
    const dlg = h("dialog", { id: "ask", class: "ask", "aria-labelledby": "ask-title" },
      h("form", { method: "dialog" },
        h("h2", { id: "ask-title" }, title),
        text ? h("p", { class: "small" }, text) : null,
        h("label", {}, "Reason", input, list),
        h("div", { class: "row" },
          h("button", { type: "submit", value: "confirm", id: "ask-confirm", class: "danger" }, confirm),
          h("button", { type: "submit", value: "keep", id: "ask-keep", class: "secondary", formnovalidate: true }, keep))));
    dlg.addEventListener("close", () => {
      resolve(dlg.returnValue === "confirm" ? input.value.trim().slice(0, 200) : null);
      dlg.remove();
    });
    document.body.append(dlg);
    dlg.showModal();
    input.focus();
  });
}

// -- the connection pill ---------------------------------------------------------------

const LABELS = {
  [State.CONNECTING]: "connecting…",
  [State.LIVE]: "live",
  [State.RECONNECTING]: "reconnecting…",
  [State.DENIED]: "denied",
  [State.CLOSED]: "closed",
};

/** Keep `el` showing the state of `socket` (rebinding to another socket drops the old one). */
export function bindPill(el, socket) {
  el._unbind?.();
  const show = (state, detail = {}) => {
    el.dataset.state = state;
    let text = LABELS[state] ?? state;
    if (state === State.RECONNECTING && detail.delay) text = `reconnecting in ${Math.ceil(detail.delay / 1000)} s…`;
    if (state === State.CLOSED && detail.archived) text = "closed (archived)";
    el.textContent = text;
    el.title = detail.code ? `close code ${detail.code}${detail.reason ? `: ${detail.reason}` : ""}` : "";
  };
  const listener = (e) => show(e.detail.state, e.detail);
  socket.addEventListener("state", listener);
  el._unbind = () => socket.removeEventListener("state", listener);
  show(socket.state);
}

// -- tracking: ETAs, distances, presence ------------------------------------------------

/** Seconds as "m:ss" (or "h:mm:ss"); never negative. */
export function duration(seconds) {
  const s = Math.max(0, Math.round(Number(seconds) || 0));
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/** Metres as "850 m" or "2.3 km". */
export function distanceText(metres) {
  const m = Number(metres);
  if (!Number.isFinite(m)) return "";
  return m < 1000 ? `${Math.round(m)} m` : `${(m / 1000).toFixed(1)} km`;
}

/**
 * The ETA a `location` frame gave, counting down: `eta.set(frame)` takes the frame's
 * `etaSeconds` (and its stop), `eta.left()` the seconds left now (null: none known).
 */
export class Countdown {
  constructor() { this.clear(); }

  set(frame) {
    if (!Number.isFinite(Number(frame?.etaSeconds))) return false;
    this.seconds = Number(frame.etaSeconds);
    this.at = Date.now();
    this.stop = frame.stop ?? null;
    this.distanceM = frame.distanceM ?? null;
    return true;
  }

  clear() { this.seconds = null; this.at = 0; this.stop = null; this.distanceM = null; }

  left() {
    if (this.seconds === null) return null;
    return Math.max(0, this.seconds - (Date.now() - this.at) / 1000);
  }
}

/** Seconds since an ISO time (null when there is none). */
export function secondsSince(ts) {
  const t = ts ? Date.parse(ts) : NaN;
  return Number.isFinite(t) ? Math.max(0, (Date.now() - t) / 1000) : null;
}

// -- the hub's settings for the apps -----------------------------------------------------

const CONFIG_WAIT_MS = 5000;
const NO_CONFIG = Object.freeze({ mapTiles: null, mapAttribution: "" });
let appConfig = null;

/**
 * What the apps learn of the hub's settings (`GET /api/config`, no token), read once per
 * page: `{mapTiles, mapAttribution}`. A hub that does not answer gives no tiles.
 */
export function hubConfig() {
  appConfig ??= hubFetch("/api/config", { signal: AbortSignal.timeout(CONFIG_WAIT_MS) })
    .then((c) => ({ ...NO_CONFIG, ...c }))
    .catch((err) => {
      console.warn(`The hub's settings could not be read (${err?.message ?? err}): no street map.`);
      return NO_CONFIG;
    });
  return appConfig;
}

// -- the map: a street map (Leaflet) where the hub has tiles ------------------------------

const LEAFLET = new URL("./vendor/leaflet/", import.meta.url);
let leaflet = null;

/** Leaflet (window.L), its script and stylesheet added to the page on the first call. */
export function loadLeaflet() {
  const load = (tag, attrs) => new Promise((resolve, reject) => {
    const el = h(tag, attrs);
    el.addEventListener("load", resolve, { once: true });
    el.addEventListener("error", () => reject(new Error(`${attrs.src ?? attrs.href} did not load`)), { once: true });
    document.head.append(el);
  });
  leaflet ??= Promise.all([
    load("link", { rel: "stylesheet", href: new URL("leaflet.css", LEAFLET).href }),
    load("script", { src: new URL("leaflet.js", LEAFLET).href }),
  ]).then(() => {
    if (!window.L?.map) throw new Error("leaflet.js defined no L.map");
    return window.L;
  });
  leaflet.catch(() => { leaflet = null; }); // a later map may try again
  return leaflet;
}

const escapeHtml = (text) => String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const PINS = {
  restaurant: { glyph: "R", label: "restaurant", size: 22, id: "street-restaurant" },
  delivery: { glyph: "D", label: "delivery", size: 22, id: "street-delivery" },
  driver: { glyph: "", label: "driver", size: 18, id: "driver-marker" },
};

/**
 * The delivery drawn on a Leaflet map over the hub's tiles: the restaurant, the drop-off,
 * the driver (his element `#driver-marker` carries `data-lat` and `data-lng`) and his
 * trail. Its points come from a DeliveryMap, which keeps them; the view follows them
 * as the SVG's frame does: it stays put while they are inside it.
 */
class StreetMap {
  constructor(L, el, config) {
    this.L = L;
    this.el = el;
    this.map = L.map(el, { scrollWheelZoom: false, zoomSnap: 0.5 });
    L.tileLayer(config.mapTiles, {
      maxZoom: 19,
      // Plain text: the setting is not markup (Leaflet writes attributions as HTML).
      attribution: escapeHtml(config.mapAttribution || ""),
    }).addTo(this.map);
    this.route = L.polyline([], { color: "#94a3b8", weight: 2, dashArray: "6 5", interactive: false }).addTo(this.map);
    this.trail = L.polyline([], { color: "#4338ca", weight: 3, opacity: 0.55, interactive: false }).addTo(this.map);
    this.markers = Object.fromEntries(Object.entries(PINS).map(([name, pin]) => [name, L.marker([0, 0], {
      icon: L.divIcon({
        className: `map-pin map-pin-${name}`,
        html: `<b>${pin.glyph}</b><span class="pin-label">${pin.label}</span>`,
        iconSize: [pin.size, pin.size],
      }),
      title: pin.label, keyboard: false, interactive: false, zIndexOffset: name === "driver" ? 1000 : 0,
    })]));
    this.viewed = 0; // how many points the view was last fitted to (0: no view yet)
    this.last = null;
    // Shown after being hidden (the customer's map card), or resized: fit again.
    new ResizeObserver(() => {
      this.map.invalidateSize({ animate: false });
      this.viewed = 0;
      if (this.last) this.draw(...this.last);
    }).observe(el);
  }

  draw(points, trail) {
    this.last = [points, trail];
    const at = (p) => [p.lat, p.lng];
    for (const [name, marker] of Object.entries(this.markers)) {
      const p = points[name];
      if (!p) {
        marker.remove();
        continue;
      }
      marker.setLatLng(at(p));
      if (!this.map.hasLayer(marker)) marker.addTo(this.map);
      const el = marker.getElement();
      if (el) {
        el.id = PINS[name].id;
        el.dataset.lat = String(p.lat);
        el.dataset.lng = String(p.lng);
      }
    }
    const { restaurant, delivery } = points;
    this.route.setLatLngs(restaurant && delivery ? [at(restaurant), at(delivery)] : []);
    this.trail.setLatLngs(trail.length > 1 ? trail.map(at) : []);
    this.el.dataset.empty = String(!Object.values(points).some(Boolean));
    this._fit(Object.values(points).filter(Boolean).map(at));
  }

  _fit(pts) {
    const size = this.map.getSize();
    if (!pts.length || !size.x || !size.y) return; // nothing to show, or hidden: later
    const bounds = this.L.latLngBounds(pts);
    if (this.viewed === pts.length && this.map.getBounds().pad(-0.05).contains(bounds)) return;
    if (pts.length === 1) this.map.setView(pts[0], 15, { animate: false });
    else this.map.fitBounds(bounds, { padding: [40, 40], maxZoom: 16, animate: false });
    this.viewed = pts.length;
  }
}

// -- the map (SVG, no tiles) -----------------------------------------------------------

const SVGNS = "http://www.w3.org/2000/svg";
function s(tag, attrs = {}) {
  const el = document.createElementNS(SVGNS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  return el;
}

/**
 * A small map of one delivery: restaurant, delivery point, driver (with its trail).
 * Coordinates are projected equirectangularly onto a 400×240 box around the points.
 *
 * With `{streets: true}`, where the hub has map tiles (`GET /api/config`), the same points
 * are drawn on a street map instead (Leaflet, loaded then): the SVG is hidden and a
 * `.street-map` element takes its place. Until the hub has answered, the SVG keeps its
 * place invisibly; without tiles (or Leaflet) it is the map. `ready` resolves to whether
 * the street map is shown.
 */
export class DeliveryMap {
  constructor(svg, { streets = false } = {}) {
    this.svg = svg;
    this.W = 400;
    this.H = 240;
    svg.setAttribute("viewBox", `0 0 ${this.W} ${this.H}`);
    svg.setAttribute("role", "img");
    this.points = { restaurant: null, delivery: null, driver: null };
    this.trail = [];
    this.frame = null;
    this.street = null;
    this.render();
    this.ready = streets ? this._streets() : Promise.resolve(false);
  }

  async _streets() {
    const svg = this.svg;
    svg.dataset.map = "pending";
    let el = null;
    try {
      const config = await hubConfig();
      if (!config.mapTiles) return false;
      const L = await loadLeaflet();
      el = h("div", {
        class: "street-map", id: `${svg.id || "map"}-streets`, role: "region",
        "aria-label": svg.getAttribute("aria-label") ?? "map",
      });
      svg.after(el);
      this.street = new StreetMap(L, el, config);
      svg.setAttribute("hidden", ""); // (an SVG element has no .hidden)
      svg.replaceChildren();
      this.render();
      return true;
    } catch (err) {
      console.warn(`No street map (${err?.message ?? err}): the schematic map instead.`);
      this.street = null;
      el?.remove();
      svg.removeAttribute("hidden");
      this.render();
      return false;
    } finally {
      delete svg.dataset.map;
    }
  }

  set(name, where) {
    const ok = where && Number.isFinite(Number(where.lat)) && Number.isFinite(Number(where.lng));
    this.points[name] = ok ? { lat: Number(where.lat), lng: Number(where.lng) } : null;
    if (name === "driver" && ok) {
      const last = this.trail.at(-1);
      if (!last || last.lat !== this.points.driver.lat || last.lng !== this.points.driver.lng) {
        this.trail.push(this.points.driver);
        if (this.trail.length > 400) this.trail.shift();
      }
    }
    if (name === "driver" && !ok) this.trail = [];
    this.render();
  }

  _fit() {
    const pts = Object.values(this.points).filter(Boolean);
    if (!pts.length) return null;
    let minLat = Math.min(...pts.map((p) => p.lat));
    let maxLat = Math.max(...pts.map((p) => p.lat));
    let minLng = Math.min(...pts.map((p) => p.lng));
    let maxLng = Math.max(...pts.map((p) => p.lng));
    const f = this.frame;
    // Keep the frame while the points stay inside it (a steady map, a moving dot).
    if (f && minLat >= f.minLat && maxLat <= f.maxLat && minLng >= f.minLng && maxLng <= f.maxLng
      && f.n === pts.length) return f;
    const k = Math.cos(((minLat + maxLat) / 2) * Math.PI / 180);
    let dLat = Math.max(maxLat - minLat, 0.01);
    let dLng = Math.max((maxLng - minLng) * k, 0.01);
    // Match the box's aspect ratio, then pad.
    const aspect = this.W / this.H;
    if (dLng / dLat < aspect) dLng = dLat * aspect;
    else dLat = dLng / aspect;
    const cLat = (minLat + maxLat) / 2;
    const cLng = (minLng + maxLng) / 2;
    const pad = 1.5;
    minLat = cLat - (dLat * pad) / 2;
    maxLat = cLat + (dLat * pad) / 2;
    minLng = cLng - (dLng * pad) / (2 * k);
    maxLng = cLng + (dLng * pad) / (2 * k);
    this.frame = { minLat, maxLat, minLng, maxLng, n: pts.length };
    return this.frame;
  }

  xy(p) {
    const f = this.frame;
    const x = ((p.lng - f.minLng) / (f.maxLng - f.minLng)) * this.W;
    const y = ((f.maxLat - p.lat) / (f.maxLat - f.minLat)) * this.H;
    return [Math.round(x * 10) / 10, Math.round(y * 10) / 10];
  }

  render() {
    if (this.street) {
      this.street.draw(this.points, this.trail);
      return;
    }
    const svg = this.svg;
    const frame = this._fit();
    svg.replaceChildren();
    const defs = s("defs");
    const pat = s("pattern", { id: `${svg.id}-grid`, width: 20, height: 20, patternUnits: "userSpaceOnUse" });
    pat.append(s("path", { d: "M 20 0 L 0 0 0 20", fill: "none", class: "map-grid" }));
    defs.append(pat);
    svg.append(defs, s("rect", { x: 0, y: 0, width: this.W, height: this.H, fill: `url(#${svg.id}-grid)`, class: "map-bg" }));
    if (!frame) {
      const t = s("text", { x: this.W / 2, y: this.H / 2, "text-anchor": "middle", class: "map-empty" });
      t.textContent = "no places yet";
      svg.append(t);
      return;
    }
    const { restaurant, delivery, driver } = this.points;
    if (restaurant && delivery) {
      const [x1, y1] = this.xy(restaurant);
      const [x2, y2] = this.xy(delivery);
      svg.append(s("line", { x1, y1, x2, y2, class: "map-route" }));
    }
    if (this.trail.length > 1) {
      svg.append(s("polyline", {
        points: this.trail.map((p) => this.xy(p).join(",")).join(" "),
        class: "map-trail", id: "driver-trail",
      }));
    }
    const place = (p, id, cls, label, glyph) => {
      const [x, y] = this.xy(p);
      const g = s("g", { class: cls, id });
      g.append(s("circle", { cx: x, cy: y, r: 10 }));
      const icon = s("text", { x, y: y + 4, "text-anchor": "middle", class: "map-glyph" });
      icon.textContent = glyph;
      const text = s("text", { x, y: y + 25, "text-anchor": "middle", class: "map-label" });
      text.textContent = label;
      g.append(icon, text);
      svg.append(g);
    };
    if (restaurant) place(restaurant, "map-restaurant", "map-restaurant", "restaurant", "R");
    if (delivery) place(delivery, "map-delivery", "map-delivery", "delivery", "D");
    if (driver) {
      const [x, y] = this.xy(driver);
      const dot = s("circle", { id: "driver-dot", cx: x, cy: y, r: 8, class: "map-driver" });
      const label = s("text", { x, y: y - 13, "text-anchor": "middle", class: "map-label map-driver-label" });
      label.textContent = "driver";
      svg.append(dot, label);
    }
  }
}
