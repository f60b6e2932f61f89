// A small client of autopilot-api, served from its own origin. Anonymous until the
// visitor signs in; answers fill in live from the events stream.
"use strict";

const API = new URLSearchParams(location.search).get("api") || "http://127.0.0.1:8000";
let accessToken = null;
let conversationId = null;
let events = null;

const $ = (id) => document.getElementById(id);

function setState(state, text) {
  document.body.dataset.state = state;
  $("status").textContent = text || state;
}

async function api(path, { method = "GET", json, headers = {} } = {}) {
  const init = { method, credentials: "include", headers: { ...headers } };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  }
  if (accessToken) init.headers.Authorization = `Bearer ${accessToken}`;
  const response = await fetch(API + path, init);
  if (!response.ok && response.status !== 404) {
    const body = await response.json().catch(() => ({}));
    throw new Error(`${method} ${path}: ${response.status} ${body.error ? body.error.code : ""}`);
  }
  return response;
}

const usd = new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" });
const share = new Intl.NumberFormat("en-US", { style: "percent", maximumFractionDigits: 2 });

// The figures the API computed (businessCase), shown in the greenlight phase; nothing is
// calculated here.
function renderBusinessCase(row) {
  const box = $("business-case");
  const data = row.businessCase;
  box.hidden = !(row.phase === "greenlight" && data);
  document.body.dataset.businessCase = box.hidden ? "hidden" : "shown";
  if (box.hidden) return;
  const lines = [
    ["Monthly cost of the manual work", usd.format(data.monthlyManualCost),
     data.costBasis === "statedSpend" ? "the spend you stated" : "hours × labor rate"],
  ];
  if (data.crossCheck) {
    lines.push(["Hours × labor rate (cross-check)", usd.format(data.crossCheck.hoursTimesRate), ""]);
  }
  lines.push(
    ["Monthly saving", usd.format(data.monthlySaving), `at ${share.format(data.utilization)} utilisation`],
    ["Yearly saving", usd.format(data.yearlySaving), ""],
  );
  for (const payback of data.maxPriceForPayback) {
    lines.push([`Pays back within ${payback.months} months up to`, usd.format(payback.maxPrice),
                `maintenance ${usd.format(payback.yearlyMaintenance)} a year`]);
  }
  const body = box.querySelector("tbody");
  body.replaceChildren();
  for (const [label, value, note] of lines) {
    const tr = document.createElement("tr");
    tr.innerHTML = "<td></td><td class='value'></td><td class='source'></td>";
    tr.children[0].textContent = label;
    tr.children[1].textContent = value;
    tr.children[2].textContent = note;
    body.appendChild(tr);
  }
  const selected = row.selectedProductIds.length;
  box.querySelector(".note").textContent = selected
    ? `${selected} product(s) selected${row.timeframe ? `, timeframe: ${row.timeframe}` : ""}.`
    : "No products selected yet: select them and a timeframe to continue to checkout.";
}

function renderProgress(row) {
  $("phase").textContent = row.phaseDisplayName;
  renderBusinessCase(row);
  const body = $("answers").querySelector("tbody");
  body.replaceChildren();
  const answers = Object.values(row.answers).sort((a, b) => a.questionId - b.questionId);
  for (const answer of answers) {
    const tr = document.createElement("tr");
    tr.dataset.key = answer.key;
    tr.innerHTML = "<td></td><td class='value'></td><td class='source'></td>";
    tr.children[0].textContent = answer.label;
    tr.children[1].textContent = String(answer.value);
    tr.children[2].textContent = answer.source;
    body.appendChild(tr);
  }
  document.body.dataset.answers = String(answers.length);
}

async function refresh() {
  const response = await api(accessToken ? "/api/v1/discovery" : "/api/v1/sessions/me");
  if (!response.ok) return null;
  const row = await response.json();
  renderProgress(row);
  return row;
}

// One EventSource per identity, never re-opened by hand: when the server ends a stream the
// browser reconnects by itself to the same URL with Last-Event-ID, and loses nothing.
// withCredentials sends the cookies: the anonymous session's, or, for a stream opened with a
// ticket, the stream cookie the ticket's first use set (the spent ticket alone is refused).
function listen(url) {
  if (events) events.close();
  document.body.dataset.events = "connecting";
  events = new EventSource(url, { withCredentials: true });
  const onChange = () => refresh().catch((error) => setState("error", error.message));
  for (const name of ["updated", "phase_changed", "extraction.completed", "claimed", "completed"]) {
    events.addEventListener(name, onChange);
  }
  events.onopen = () => { document.body.dataset.events = "open"; };
  events.onerror = () => {
    document.body.dataset.events = events.readyState === EventSource.CLOSED ? "closed" : "reconnecting";
  };
}

function bubble(role, text) {
  const div = document.createElement("div");
  div.className = `msg ${role}`;
  div.textContent = text;
  $("messages").appendChild(div);
  $("messages").scrollTop = $("messages").scrollHeight;
  return div;
}

function countReplies() {
  document.body.dataset.replies = String(document.querySelectorAll(".assistant").length);
}

// A conversation opens with the agent's greeting and first question: show it at once.
// The session's current conversation is resumed; otherwise a new one is started.
async function openConversation(currentId) {
  let conversation = null;
  if (currentId) {
    const response = await api(`/api/v1/conversations/${currentId}?limit=200`);
    if (response.ok) conversation = await response.json();
  }
  if (!conversation) {
    conversation = await (await api("/api/v1/conversations", { method: "POST", json: {} })).json();
  }
  conversationId = conversation.id;
  $("messages").replaceChildren();
  for (const message of conversation.messages) bubble(message.role, message.content);
  countReplies();
}

// The reply streams as SSE over a POST, so fetch reads it (EventSource is GET-only).
async function sendMessage(text) {
  if (!conversationId) await openConversation(null);
  bubble("user", text);
  const reply = bubble("assistant", "");
  const response = await api(`/api/v1/conversations/${conversationId}/messages`, {
    method: "POST", json: { content: text }, headers: { Accept: "text/event-stream" },
  });
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const event = /^event: (.*)$/m.exec(block);
      const data = /^data: (.*)$/m.exec(block);
      if (!event || !data) continue;
      const payload = JSON.parse(data[1]);
      if (event[1] === "delta") reply.textContent += payload.text;
      if (event[1] === "error") reply.textContent = payload.error.message;
    }
  }
  countReplies();
}

async function claim(token) {
  accessToken = token;
  $("token").value = "";
  const response = await api("/api/v1/sessions/claim", { method: "POST" });
  const result = await response.json();
  renderProgress(result.profile);
  $("answers-title").textContent = "Saved to your profile";
  // EventSource cannot send the bearer token: a ticket in the URL stands for it.
  const ticket = (await (await api("/api/v1/events/ticket", { method: "POST" })).json()).ticket;
  listen(`${API}/api/v1/events?ticket=${encodeURIComponent(ticket)}`);
  setState("claimed", `signed in · ${result.conversationsMoved} conversation(s) saved`);
}

$("chat").addEventListener("submit", (event) => {
  event.preventDefault();
  const text = $("message").value.trim();
  if (!text) return;
  $("message").value = "";
  sendMessage(text).catch((error) => setState("error", error.message));
});

$("signin").addEventListener("submit", (event) => {
  event.preventDefault();
  claim($("token").value.trim()).catch((error) => setState("error", error.message));
});

(async () => {
  await api("/api/v1/sessions", { method: "POST" });
  const session = await refresh();
  listen(`${API}/api/v1/events`);
  await openConversation(session && session.conversationId);
  setState("ready", "anonymous session");
})().catch((error) => setState("error", error.message));
