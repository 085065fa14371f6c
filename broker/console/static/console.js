// The web console: the broker's JavaScript client and GET /v1/stats, in a page.

import { connect } from "../v1/client.js";

const $ = (id) => document.getElementById(id);
const base = new URL(".", location.href); // the broker's root, also when mounted under a prefix
const wsBase = `${base.protocol === "https:" ? "wss" : "ws"}://${base.host}${base.pathname}v1/ws`;
const MAX_LOG = 500;

let client = null;
let selected = null;
const chips = new Map();

// --- the log ---------------------------------------------------------------------------------

function log(kind, text) {
  const list = $("log");
  list.querySelector(".empty")?.remove();
  const item = document.createElement("li");
  item.className = kind;
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString([], { hour12: false });
  const label = document.createElement("span");
  label.className = "kind";
  label.textContent = kind;
  const body = document.createElement("span");
  body.className = "body";
  body.textContent = text;
  item.append(time, label, body);
  list.prepend(item);
  while (list.children.length > MAX_LOG) list.lastElementChild.remove();
}

function emptyLog() {
  $("log").innerHTML = '<li class="empty">Nothing yet: connect, subscribe and publish.</li>';
}

const short = (value) => {
  const text = JSON.stringify(value);
  return text.length > 400 ? text.slice(0, 400) + "…" : text;
};

// --- connection ------------------------------------------------------------------------------

function setStatus(state, text) {
  $("status").dataset.state = state;
  $("status-text").textContent = text;
  const online = state === "online";
  for (const id of ["subscribe", "publish", "history", "presence"]) $(id).disabled = !online;
  $("disconnect").disabled = client === null;
  $("connect").disabled = client !== null;
  $("client-id").textContent = online && client ? `client ${client.clientId}` : "";
}

async function doConnect(event) {
  event.preventDefault();
  if (client) return;
  const token = $("token").value.trim();
  setStatus("connecting", "connecting…");
  $("connect").disabled = true;
  try {
    client = await connect($("url").value.trim(), {
      encoding: $("encoding").value,
      token: token || null,
    });
  } catch (error) {
    client = null;
    setStatus("offline", "disconnected");
    log("error", error.message);
    return;
  }
  client.on("connected", ({ client: id, connection }) => {
    setStatus("online", "connected");
    log("connected", `as ${id} (connection ${connection})`);
    refreshChips();
  });
  client.on("disconnected", ({ code, reason, reconnect }) => {
    setStatus(reconnect ? "connecting" : "offline", reconnect ? "reconnecting…" : "disconnected");
    log("disconnected", `${code} ${reason}${reconnect ? " (reconnecting)" : ""}`);
  });
  client.on("closed", (error) => {
    if (error) log("error", error.message);
    client = null;
    for (const channel of [...chips.keys()]) removeChip(channel);
    setStatus("offline", "disconnected");
  });
  client.on("resync", (resync) => {
    log("resync", `${resync.channel}: missed publications are gone; now at ${resync.offset}@${resync.epoch}`);
    refreshChips();
  });
  client.on("gap", (gap) => log("gap", `${gap.channel}: offsets ${gap.fromOffset}–${gap.toOffset} skipped`));
  client.on("error", (error) => log("error", error.message));
  setStatus("online", "connected");
  log("connected", `as ${client.clientId} (${client.encoding})`);
}

function doDisconnect() {
  client?.close();
}

// --- channels --------------------------------------------------------------------------------

function select(channel) {
  selected = channel;
  for (const [name, chip] of chips) chip.classList.toggle("selected", name === channel);
  if (channel) $("publish-channel").value = channel;
}

function refreshChips() {
  if (!client) return;
  for (const [channel, chip] of chips) {
    const sub = client.subscriptions.get(channel);
    const position = sub?.position;
    chip.querySelector("small").textContent = position ? `@${position.offset}` : "";
  }
}

function removeChip(channel) {
  chips.get(channel)?.remove();
  chips.delete(channel);
  if (selected === channel) select(chips.keys().next().value ?? null);
}

async function doSubscribe(event) {
  event.preventDefault();
  const channel = $("channel").value.trim();
  if (!client || !channel) return;
  try {
    await client.subscribe(channel, {
      onMessage: (m) => {
        log("message", `${m.channel} @${m.offset} ${short(m.data)}${m.publisher ? " from " + m.publisher : ""}`);
        refreshChips();
      },
      onJoin: (j) => log("join", `${j.channel}: ${j.client}${j.user ? " (" + j.user + ")" : ""}`),
      onLeave: (l) => log("leave", `${l.channel}: ${l.client}${l.user ? " (" + l.user + ")" : ""}`),
      onError: (error) => {
        log("error", `${channel}: ${error.message}`);
        removeChip(channel);
      },
    });
  } catch (error) {
    log("error", `subscribe ${channel}: ${error.message}`);
    return;
  }
  const chip = document.createElement("li");
  chip.dataset.channel = channel;
  chip.append(channel, " ", document.createElement("small"));
  const remove = document.createElement("button");
  remove.type = "button";
  remove.title = `unsubscribe from ${channel}`;
  remove.textContent = "×";
  remove.addEventListener("click", async (e) => {
    e.stopPropagation();
    removeChip(channel);
    await client?.unsubscribe(channel).catch(() => {});
    log("unsubscribed", channel);
  });
  chip.append(remove);
  chip.addEventListener("click", () => select(channel));
  $("subscriptions").append(chip);
  chips.set(channel, chip);
  select(channel);
  refreshChips();
  log("subscribed", channel);
  $("channel").value = "";
}

async function query(kind) {
  const channel = selected ?? $("publish-channel").value.trim();
  const out = $("query-result");
  if (!client || !channel) return;
  out.hidden = false;
  try {
    if (kind === "history") {
      const page = await client.history(channel, { limit: 50 });
      const lines = page.publications.map((p) => `@${p.offset} ${short(p.data)}`);
      out.textContent = `history of ${channel} (epoch ${page.epoch}, latest offset ${page.offset})\n` +
        (lines.length ? lines.join("\n") : "(nothing retained)");
    } else {
      const members = await client.presence(channel);
      out.textContent = `presence in ${channel}: ${members.length}\n` +
        members.map((m) => `${m.client}${m.user ? " (" + m.user + ")" : ""}`).join("\n");
    }
  } catch (error) {
    out.textContent = `${kind} ${channel}: ${error.message}`;
  }
}

async function doPublish(event) {
  event.preventDefault();
  const channel = $("publish-channel").value.trim();
  const result = $("publish-result");
  let data;
  try {
    data = JSON.parse($("publish-data").value);
  } catch (error) {
    result.textContent = `not JSON: ${error.message}`;
    return;
  }
  try {
    const reply = await client.publish(channel, data);
    result.textContent = `published at offset ${reply.offset} (epoch ${reply.epoch})`;
  } catch (error) {
    result.textContent = error.message;
  }
}

// --- live figures ----------------------------------------------------------------------------

let previous = null;
const series = [];

function number(value) {
  return value >= 100 ? Math.round(value).toLocaleString("en") : (Math.round(value * 10) / 10).toString();
}

async function poll() {
  let stats;
  try {
    const key = $("api-key").value.trim();
    const response = await fetch(new URL("v1/stats", base), {
      cache: "no-store",
      headers: key ? { Authorization: `Bearer ${key}` } : {},
    });
    if (response.status === 401) throw new Error("the HTTP API needs an API key: enter it above");
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    stats = await response.json();
  } catch (error) {
    $("figures-age").textContent = `(figures unavailable: ${error.message})`;
    return;
  }
  const now = performance.now();
  $("fig-connections").textContent = stats.connections;
  $("fig-outbox").textContent = stats.outbox_messages;
  $("fig-subscriptions").textContent = stats.subscriptions;
  $("fig-channels").textContent = stats.channels;
  if (previous && stats.pid === previous.stats.pid) {
    const seconds = (now - previous.at) / 1000;
    const pubs = Math.max(0, stats.publications - previous.stats.publications) / seconds;
    const deliveries = Math.max(0, stats.deliveries - previous.stats.deliveries) / seconds;
    $("fig-pubs").textContent = number(pubs);
    $("fig-deliveries").textContent = number(deliveries);
    series.push([pubs, deliveries]);
    if (series.length > 60) series.shift();
    drawSpark();
  }
  previous = { stats, at: now };
  const drops = $("drops");
  drops.replaceChildren(
    ...Object.entries(stats.drops).map(([reason, count]) => {
      const div = document.createElement("div");
      const dt = document.createElement("dt");
      dt.textContent = reason.replaceAll("_", " ");
      const dd = document.createElement("dd");
      dd.textContent = count;
      dd.dataset.reason = reason;
      if (count > 0) dd.className = "hot";
      div.append(dt, dd);
      return div;
    }),
  );
  $("figures-age").textContent = `pid ${stats.pid} · up ${Math.floor(stats.uptime)} s`;
}

const styles0 = () => getComputedStyle(document.documentElement);

function drawSpark() {
  const canvas = $("spark");
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth;
  const height = canvas.clientHeight;
  canvas.width = width * ratio;
  canvas.height = height * ratio;
  const ctx = canvas.getContext("2d");
  ctx.scale(ratio, ratio);
  ctx.clearRect(0, 0, width, height);
  canvas.dataset.points = String(series.length);
  const top = Math.max(1, ...series.flat());
  ctx.strokeStyle = styles0().getPropertyValue("--line").trim();
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(0, height - 1.5);
  ctx.lineTo(width, height - 1.5);
  ctx.stroke();
  const styles = styles0();
  [
    [1, styles.getPropertyValue("--ok")],
    [0, styles.getPropertyValue("--accent")],
  ].forEach(([index, color]) => {
    ctx.beginPath();
    const offset = 60 - series.length; // the newest point at the right edge
    series.forEach((point, i) => {
      const x = ((offset + i) / 59) * (width - 2) + 1;
      const y = height - 2 - (point[index] / top) * (height - 6);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.strokeStyle = color.trim();
    ctx.lineWidth = 1.5;
    ctx.stroke();
  });
}

// --- start -----------------------------------------------------------------------------------

$("url").value = wsBase;
$("connect-form").addEventListener("submit", doConnect);
$("disconnect").addEventListener("click", doDisconnect);
$("subscribe-form").addEventListener("submit", doSubscribe);
$("publish-form").addEventListener("submit", doPublish);
$("history").addEventListener("click", () => query("history"));
$("presence").addEventListener("click", () => query("presence"));
$("clear").addEventListener("click", emptyLog);
emptyLog();
setStatus("offline", "disconnected");
poll();
setInterval(poll, 1000);
