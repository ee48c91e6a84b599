// The synchspeed console: reads and actions over the public API only, with the caller's
// token (kept for this tab only), live from the event streams. No framework, nothing
// fetched from anywhere but this service.
"use strict";

const $ = (id) => document.getElementById(id);
const TOKEN_KEY = "synchspeed-token";

function token() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

function headers(extra) {
  const h = Object.assign({ Accept: "application/json" }, extra || {});
  if (token()) h.Authorization = "Bearer " + token();
  return h;
}

function say(text, info) {
  const box = $("message");
  box.textContent = text;
  box.className = info ? "info" : "";
  box.hidden = !text;
}

async function api(path, options) {
  const response = await fetch(path, Object.assign({ headers: headers() }, options || {}));
  let body = null;
  try { body = await response.json(); } catch (_) { body = null; }
  if (!response.ok && !(body && body.id)) {
    const error = (body && body.error) || { code: "http_" + response.status, message: response.statusText };
    if (response.status === 401) say("The service asks for a token: enter it above. (" + error.message + ")");
    else say(error.message + " (" + error.code + ")");
    throw new Error(error.code);
  }
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    node.append(child instanceof Node ? child : document.createTextNode(child == null ? "" : String(child)));
  }
  return node;
}

function stateWord(state) {
  return el("span", { class: "state-" + state }, state);
}

function table(columns, rows) {
  if (!rows.length) return el("p", {}, "None.");
  return el("table", {},
    el("thead", {}, el("tr", {}, columns.map((c) => el("th", { scope: "col" }, c)))),
    el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) => el("td", {}, c))))));
}

function opLink(id) {
  return el("a", { href: "#/op/" + id }, id);
}

function ipLink(ip) {
  return el("a", { href: "#/ip/" + encodeURIComponent(ip) }, ip);
}

function when(text) {
  if (!text) return "";
  const date = new Date(text);
  return el("time", { datetime: text, title: text }, date.toLocaleString());
}

// --- reads ---------------------------------------------------------------------------

const principals = new Map();

async function principalOf(id) {
  if (!principals.has(id)) {
    const op = await api("/api/v1/operations/" + id).catch(() => null);
    principals.set(id, op ? (op.caller.principal || op.caller.addr) : "?");
  }
  return principals.get(id);
}

async function loadHolds() {
  const held = await api("/api/v1/offline");
  const rows = [];
  for (const h of held.instances) {
    rows.push([h.app, h.instanceId, ipLink(h.ip), String(h.port), when(h.since),
      await principalOf(h.operationId), opLink(h.operationId),
      el("button", { type: "button", onclick: () => ask("online", h.ip, h.port) }, "Bring online…")]);
  }
  $("holds").replaceChildren(table(["App", "Instance", "IP", "Port", "Since", "By", "Operation", ""], rows));
}

async function loadOps() {
  const query = new URLSearchParams({ limit: "25" });
  for (const [key, id] of [["ip", "ops-ip"], ["app", "ops-app"], ["state", "ops-state"]]) {
    if ($(id).value.trim()) query.set(key, $(id).value.trim());
  }
  const list = await api("/api/v1/operations?" + query);
  $("ops").replaceChildren(table(["Created", "Action", "State", "Target", "Nodes acked", "By", "Operation"],
    list.operations.map((op) => [when(op.createdAt), op.action, stateWord(op.state), ipLink(op.target.ip),
      op.gateways.filter((n) => n.state === "acked").length + " of " + op.gateways.length,
      op.caller.principal || op.caller.addr, opLink(op.id)])));
}

async function showIp(ip) {
  $("ip").value = ip;
  const view = await api("/api/v1/instances/" + encodeURIComponent(ip)).catch(() => null);
  if (!view) { $("instance").replaceChildren(); return; }
  const rows = view.instances.map((i) => [i.app, i.instanceId, String(i.port), i.status,
    i.held ? "held offline" : "not held"]);
  $("instance").replaceChildren(
    table(["App", "Instance", "Port", "Registry status", "synchspeed"], rows),
    el("div", { class: "buttons" },
      el("button", { type: "button", class: "danger", onclick: () => ask("offline", ip) }, "Take offline…"),
      el("button", { type: "button", onclick: () => ask("online", ip) }, "Bring online…")),
    view.lastOperation ? el("p", {}, "Last operation: ", opLink(view.lastOperation.id), " ",
      view.lastOperation.action, " ", stateWord(view.lastOperation.state)) : "");
}

// --- one operation, live ---------------------------------------------------------------

let watching = null;

function renderOperation(op) {
  $("operation-section").hidden = false;
  $("operation-id").textContent = op.id;
  const acked = op.gateways.filter((n) => n.state === "acked").length;
  $("operation-summary").replaceChildren(op.action + " of ", ipLink(op.target.ip), ": ",
    stateWord(op.state), ", " + acked + " of " + op.gateways.length + " nodes acknowledged",
    op.reason ? " — " + op.reason : "");
  $("operation").replaceChildren(
    table(["Instance", "Registry"], op.instances.map((i) => [i.instanceId, i.registry])),
    table(["Group", "Node", "State", "Attempts", "Latency", "Error"],
      op.gateways.map((n) => [n.group, n.node, stateWord(n.state), String(n.attempts),
        n.latencyMs == null ? "" : n.latencyMs.toFixed(1) + " ms", n.error || ""])));
}

async function watchOperation(id) {
  if (watching) watching.abort();
  const control = new AbortController();
  watching = control;
  let op = null;
  await stream("/api/v1/operations/" + id + "/events", control.signal, (event, data) => {
    if (data.operation) op = data.operation;
    else if (op && data.node) op.gateways[data.slot] = data.node;
    if (op) renderOperation(op);
  }).catch(() => {});
}

// --- actions ---------------------------------------------------------------------------

let pending = null;

function ask(action, ip, port) {
  pending = { action, ip, port };
  const what = action === "offline" ? "Take " + ip + " offline" : "Bring " + ip + " online";
  $("confirm-title").textContent = what + (port ? " (port " + port + ")" : "") + "?";
  $("confirm-button").textContent = "Confirm " + action;
  $("confirm").hidden = false;
  $("reason").focus();
}

function randomKey() {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes);
  return "ui-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

async function confirmAction(event) {
  event.preventDefault();
  if (!pending) return;
  const { action, ip, port } = pending;
  pending = null;
  $("confirm").hidden = true;
  const body = {};
  if (port) body.port = port;
  if ($("reason").value.trim()) body.reason = $("reason").value.trim();
  const op = await api("/api/v1/instances/" + encodeURIComponent(ip) + "/" + action, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", "Idempotency-Key": randomKey() }),
    body: JSON.stringify(body),
  }).catch(() => null);
  $("reason").value = "";
  if (op && op.id) {
    say(action + " of " + ip + " accepted", true);
    location.hash = "#/op/" + op.id;
  }
}

// --- the live stream of everything -----------------------------------------------------

async function stream(path, signal, onEvent, onOpen) {
  const response = await fetch(path, { headers: headers({ Accept: "text/event-stream" }), signal });
  if (!response.ok) {
    const error = new Error("stream " + response.status);
    error.status = response.status;
    throw error;
  }
  if (onOpen) onOpen();
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = null;
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data += line.slice(5).trimStart();
      }
      if (name && data) onEvent(name, JSON.parse(data));
    }
  }
}

let refreshTimer = null;

function refreshSoon() {
  clearTimeout(refreshTimer);
  refreshTimer = setTimeout(() => { loadHolds().catch(() => {}); loadOps().catch(() => {}); }, 250);
}

// Resolved when the token form is submitted: a stream refused for its token waits for one
// rather than asking again and again with the same (missing) token.
let tokenEntered = null;
function nextToken() {
  return new Promise((resolve) => { tokenEntered = resolve; });
}

const RETRY_FIRST_MS = 2000;
const RETRY_MAX_MS = 60000;

async function followEverything() {
  let wait = RETRY_FIRST_MS;
  for (;;) {
    let connected = false;
    try {
      $("live").textContent = "connecting";
      await stream("/api/v1/events", undefined, (event) => {
        if (event === "started" || event === "settled" || event === "lagged") refreshSoon();
      }, () => { connected = true; wait = RETRY_FIRST_MS; $("live").textContent = "live"; });
    } catch (error) {
      if (error.status === 401 || error.status === 403) {
        $("live").textContent = error.status === 401 ? "enter the token" : "not allowed";
        await nextToken();
        continue;
      }
    }
    // Broken off or refused for another reason: back off, doubling up to a minute.
    $("live").textContent = "reconnecting in " + Math.round(wait / 1000) + " s";
    await new Promise((resolve) => setTimeout(resolve, wait));
    wait = connected ? RETRY_FIRST_MS : Math.min(wait * 2, RETRY_MAX_MS);
  }
}

// --- routing ---------------------------------------------------------------------------

function route() {
  const hash = location.hash;
  if (hash.startsWith("#/op/")) watchOperation(hash.slice(5));
  else if (hash.startsWith("#/ip/")) showIp(decodeURIComponent(hash.slice(5)));
}

function start() {
  $("token").value = token();
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    say("");
    if (tokenEntered) { tokenEntered(); tokenEntered = null; }
    principals.clear();
    loadHolds().catch(() => {});
    loadOps().catch(() => {});
  });
  $("ip-form").addEventListener("submit", (event) => {
    event.preventDefault();
    location.hash = "#/ip/" + encodeURIComponent($("ip").value.trim());
  });
  $("ops-form").addEventListener("submit", (event) => { event.preventDefault(); loadOps().catch(() => {}); });
  $("confirm-form").addEventListener("submit", confirmAction);
  $("cancel-button").addEventListener("click", () => { pending = null; $("confirm").hidden = true; });
  window.addEventListener("hashchange", route);
  loadHolds().catch(() => {});
  loadOps().catch(() => {});
  route();
  followEverything();
}

document.addEventListener("DOMContentLoaded", start);
