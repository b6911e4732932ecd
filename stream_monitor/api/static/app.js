// stream-monitor operator page. Plain JavaScript, no build step, no dependencies.
//
// Data: GET /events (Server-Sent Events: config, streams, live, alert, feed) and
// GET /streams/{id}/live.mjpeg (the chosen stream's analysed frames). Both are GETs that a
// browser makes without custom headers, so the API token goes in ?access_token= (RFC 6750
// §2.3); fetch() calls send it as a bearer header. The token lives in sessionStorage (this
// tab only) and is asked for whenever the API answers 401.
// Text from the server is always inserted with textContent, never as HTML.
"use strict";

const TOKEN_KEY = "stream-monitor-token";
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const MAX_INCIDENTS = 200;
const NEAR_FRACTION = 0.8; // "near" the threshold: fused >= 80 % of it

const $ = (id) => document.getElementById(id);
const state = {
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  events: null,          // the EventSource
  config: null,          // the /events config event
  streams: new Map(),    // id -> status
  selected: null,        // chosen stream id
  videoKey: null,        // which stream session the <img> was opened for
  threshold: null,
  incidents: new Map(),  // alert_id -> {li, payload}
  seen: new Set(),       // alert_id:seq already shown (Redis delivery is at least once)
  publish: null,         // {pc, media, location, id}
};

// ---------------------------------------------------------------- helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}
const fmt = (x, digits = 2) => (typeof x === "number" && isFinite(x) ? x.toFixed(digits) : "–");
const scoreText = (scores) => Object.entries(scores || {}).map(([d, p]) => `${d} ${fmt(p)}`).join(" · ");
const clock = (date) => date.toLocaleTimeString([], { hour12: false });

function showError(message) {
  const box = $("error");
  box.textContent = message || "";
  box.hidden = !message;
}
function setPill(id, text, kind) {
  const pill = $(id);
  pill.textContent = text;
  pill.className = "pill" + (kind ? " " + kind : "");
}
function withToken(url) {
  if (!state.token) return url;
  return url + (url.includes("?") ? "&" : "?") + "access_token=" + encodeURIComponent(state.token);
}
function authHeaders(extra = {}) {
  return state.token ? { ...extra, Authorization: "Bearer " + state.token } : extra;
}
async function errorText(resp) {
  try {
    const body = await resp.json();
    if (body && body.error) return body.error;
  } catch (_) { /* not JSON */ }
  return `${resp.status} ${resp.statusText}`;
}

// ---------------------------------------------------------------- token
function askToken(reason) {
  $("token-reason").textContent = reason;
  $("token-form").hidden = false;
  $("token-input").focus();
}
$("token-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  state.token = $("token-input").value.trim();
  sessionStorage.setItem(TOKEN_KEY, state.token);
  $("token-input").value = "";
  $("token-form").hidden = true;
  showError("");
  start();
});
$("token-change").addEventListener("click", () => askToken("Enter the API token (api.token of the service)."));

// ---------------------------------------------------------------- live feed
// Probe with fetch first: EventSource cannot tell a 401 from a network error.
async function start() {
  if (state.events) { state.events.close(); state.events = null; }
  setPill("connection", "connecting…");
  let resp;
  try {
    resp = await fetch("/streams", { headers: authHeaders(), cache: "no-store" });
  } catch (err) {
    setPill("connection", "offline", "bad");
    showError("Cannot reach the service: " + err.message + ". Retrying…");
    setTimeout(start, 3000);
    return;
  }
  if (resp.status === 401) {
    setPill("connection", "needs token", "bad");
    askToken(state.token ? "The API token was not accepted; enter the right one." : "This service needs an API token.");
    return;
  }
  if (!resp.ok) {
    showError("The service answered " + (await errorText(resp)) + ". Retrying…");
    setTimeout(start, 3000);
    return;
  }
  showError("");
  renderStreams((await resp.json()).streams || []);
  const es = new EventSource(withToken("/events"));
  state.events = es;
  es.onopen = () => setPill("connection", "live", "good");
  es.onerror = () => {
    if (state.events !== es) return;
    if (es.readyState === EventSource.CLOSED) {  // refused (e.g. 401): find out why
      es.close();
      state.events = null;
      setTimeout(start, 1000);
    } else {
      setPill("connection", "reconnecting…", "bad");  // EventSource retries by itself
    }
  };
  es.addEventListener("config", (ev) => onConfig(JSON.parse(ev.data)));
  es.addEventListener("streams", (ev) => renderStreams(JSON.parse(ev.data).streams));
  es.addEventListener("live", (ev) => onLive(JSON.parse(ev.data)));
  es.addEventListener("alert", (ev) => onAlert(JSON.parse(ev.data)));
  es.addEventListener("feed", (ev) => onFeed(JSON.parse(ev.data)));
}

function onConfig(cfg) {
  state.config = cfg;
  state.threshold = cfg.threshold;
  $("threshold").textContent = `alert threshold ${fmt(cfg.threshold)}`;
  const notice = $("notice");
  if (!cfg.redis) {
    notice.textContent = "no Redis: showing this worker's alerts only";
    notice.hidden = false;
  } else {
    notice.hidden = true;
  }
  setPill("feed", cfg.redis ? "alerts: Redis" : "alerts: this worker");
}

function onFeed(feed) {
  if (feed.ok) {
    setPill("feed", feed.source === "redis" ? "alerts: Redis" : "alerts: this worker", "good");
    if (state.config && state.config.redis) $("notice").hidden = true;
  } else {
    setPill("feed", "alerts: Redis down", "bad");
    $("notice").textContent = feed.error || "the alert feed is down; retrying";
    $("notice").hidden = false;
  }
}

// ---------------------------------------------------------------- streams
function renderStreams(list) {
  const body = $("streams").tBodies[0];
  const ids = new Set(list.map((s) => s.id));
  for (const row of [...body.rows]) if (!ids.has(row.dataset.id)) row.remove();
  state.streams = new Map(list.map((s) => [s.id, s]));
  for (const s of list) {
    let row = body.querySelector(`tr[data-id="${CSS.escape(s.id)}"]`);
    if (!row) {
      row = el("tr", { class: "stream", "data-id": s.id });
      row.append(el("td", { class: "stream-id" }), el("td", { class: "state" }), el("td", { class: "num fps" }),
                 el("td", { class: "num faces" }), el("td", { class: "scores" }));
      row.addEventListener("click", () => choose(s.id));
      body.append(row);
    }
    const [idCell, stateCell, fpsCell, facesCell, scoresCell] = row.cells;
    idCell.textContent = s.id;
    idCell.title = s.url || "";
    stateCell.textContent = s.state;
    stateCell.className = "state state-" + s.state;
    stateCell.title = s.last_error ? "last error: " + s.last_error : "";
    fpsCell.textContent = fmt(s.fps, 1);
    facesCell.textContent = String(s.faces);
    scoresCell.textContent = scoreText(s.last_scores) || "–";
    row.dataset.state = s.state;
    row.classList.toggle("selected", s.id === state.selected);
  }
  $("streams-empty").hidden = list.length > 0;
  if (!state.selected) {
    const wanted = new URLSearchParams(location.hash.slice(1)).get("stream");
    if (wanted && state.streams.has(wanted)) choose(wanted);
  } else {
    refreshVideo();
  }
}

function choose(id) {
  state.selected = id;
  history.replaceState(null, "", "#stream=" + encodeURIComponent(id));
  for (const row of $("streams").tBodies[0].rows) row.classList.toggle("selected", row.dataset.id === id);
  for (const inc of state.incidents.values()) inc.li.classList.toggle("chosen", inc.payload.stream_id === id);
  $("viewer-title").textContent = "Stream " + id;
  $("boxes").replaceChildren();
  state.videoKey = null;
  refreshVideo();
}

// (Re)open the MJPEG feed when the chosen stream (re)starts; it ends with its stream.
function refreshVideo() {
  const s = state.streams.get(state.selected);
  const img = $("video");
  const placeholder = $("video-placeholder");
  if (!s) {
    img.hidden = true;
    img.removeAttribute("src");
    state.videoKey = null;
    placeholder.textContent = `Stream ${state.selected} is gone.`;
    placeholder.hidden = false;
    $("boxes").replaceChildren();
    return;
  }
  const live = s.state === "up" || s.frames_analysed > 0;
  const key = `${s.id}|${s.started_at}|${s.sessions}`;
  if (live && key !== state.videoKey && !["ended", "stopped"].includes(s.state)) {
    state.videoKey = key;
    img.src = withToken(`/streams/${encodeURIComponent(s.id)}/live.mjpeg`) + `&t=${Date.now()}`;
    img.hidden = false;
  }
  placeholder.hidden = live;
  if (!live) placeholder.textContent = `Stream ${s.id}: ${s.state}, waiting for frames…`;
}
$("video").addEventListener("error", () => {
  // The feed broke (server restart, stream replaced): try again on the next streams event.
  state.videoKey = null;
});

// ---------------------------------------------------------------- face boxes
function level(fused, threshold) {
  if (fused === null || fused === undefined || threshold === null || threshold === undefined) return "pending";
  if (fused >= threshold) return "alert";
  if (fused >= NEAR_FRACTION * threshold) return "near";
  return "ok";
}

function onLive(live) {
  if (live.stream_id !== state.selected || !live.width || !live.height) return;
  $("viewer").style.aspectRatio = `${live.width} / ${live.height}`;
  const boxes = live.faces.map((face) => {
    const [x1, y1, x2, y2] = face.box;
    // A face's own threshold: with a calibration it depends on the detectors that scored it.
    const lvl = level(face.fused, face.threshold ?? live.threshold);
    const box = el("div", {
      class: `face-box ${lvl}`, "data-track": String(face.track_id),
      "data-fused": face.fused === null ? "" : String(face.fused), "data-level": lvl,
    });
    box.style.left = `${(100 * Math.max(0, x1)) / live.width}%`;
    box.style.top = `${(100 * Math.max(0, y1)) / live.height}%`;
    box.style.width = `${(100 * (Math.min(x2, live.width) - Math.max(0, x1))) / live.width}%`;
    box.style.height = `${(100 * (Math.min(y2, live.height) - Math.max(0, y1))) / live.height}%`;
    // Keep the label inside the picture: below boxes at the top, right-aligned on the right half.
    if (y1 < 0.15 * live.height) box.classList.add("label-below");
    if (x1 + x2 > live.width) box.classList.add("label-right");
    const detectors = el("div", { class: "detectors" });
    for (const [det, p] of Object.entries(face.scores)) {
      if (detectors.childNodes.length) detectors.append(" · ");
      detectors.append(el("span", { class: "detector-score", "data-detector": det, text: `${det} ${fmt(p)}` }));
    }
    const label = el("div", { class: "box-label" },
      el("div", {},
        el("span", { class: "track", text: `#${face.track_id} ` }),
        el("span", { class: "fused", text: face.fused === null ? "scoring…" : `fused ${fmt(face.fused)}` })),
      detectors);
    box.append(label);
    return box;
  });
  $("boxes").replaceChildren(...boxes);
}

// ---------------------------------------------------------------- alert timeline
function onAlert(a) {
  const key = `${a.alert_id}:${a.seq}`;
  if (state.seen.has(key)) return;
  state.seen.add(key);
  if (state.seen.size > 10 * MAX_INCIDENTS) state.seen = new Set([...state.seen].slice(-5 * MAX_INCIDENTS));
  let inc = state.incidents.get(a.alert_id);
  if (!inc) {
    const li = el("li", { class: "alert", "data-alert-id": a.alert_id, "data-stream": a.stream_id });
    inc = { li, payload: a, started: a.event === "start" ? a.emitted_at : null, peak: a.score, updates: 0 };
    state.incidents.set(a.alert_id, inc);
    $("timeline").prepend(li);
    while (state.incidents.size > MAX_INCIDENTS) {
      const [oldest] = state.incidents.keys();
      state.incidents.get(oldest).li.remove();
      state.incidents.delete(oldest);
    }
  }
  if (a.seq < (inc.payload.seq ?? -1)) return;  // a late duplicate of an older event
  inc.payload = a;
  inc.peak = Math.max(inc.peak, a.score);
  if (a.event === "start") inc.started = a.emitted_at;
  if (a.event === "update") inc.updates += 1;
  renderIncident(inc);
  $("timeline-empty").hidden = true;
}

function renderIncident(inc) {
  const a = inc.payload;
  const li = inc.li;
  li.dataset.event = a.event;
  li.classList.toggle("ended", a.event === "end");
  li.classList.toggle("chosen", a.stream_id === state.selected);
  const when = new Date(inc.started || a.emitted_at);
  const head = el("div", { class: "alert-head" },
    el("time", { datetime: inc.started || a.emitted_at, text: clock(when) }),
    el("span", { class: "event", text: a.event === "end" ? "ended" : a.event === "start" ? "alert" : "ongoing" }),
    el("span", { class: "alert-stream", text: a.stream_id }),
    el("span", { class: "muted", text: `track ${a.track_id}` }));
  const body = el("div", { class: "alert-body" },
    el("div", { text: `score ${fmt(a.score)} (threshold ${fmt(a.threshold)}, peak ${fmt(inc.peak)})` +
                      (inc.updates ? `, ${inc.updates} update${inc.updates > 1 ? "s" : ""}` : "") }),
    el("div", { class: "scores", text: scoreText(a.detectors) }));
  if (a.calibrated === false) body.append(el("div", { text: "uncalibrated (random weights)" }));
  if (a.event === "end") body.append(el("div", { text: "ended " + clock(new Date(a.emitted_at)) }));
  li.replaceChildren(head, body);
  li.onclick = () => { if (state.streams.has(a.stream_id)) choose(a.stream_id); };
}

// ---------------------------------------------------------------- publish this camera (WHIP)
function publishStatus(text, kind) {
  const p = $("publish-status");
  p.textContent = text;
  p.className = kind || "muted";
}

function iceGatheringDone(pc, timeoutMs) {
  // No trickle ICE: the offer carries every candidate, so wait for gathering to finish.
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => { if (pc.iceGatheringState === "complete") resolve(); };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

async function publish() {
  const id = $("publish-id").value.trim();
  if (!ID_PATTERN.test(id)) {
    publishStatus("The stream id must be 1-64 letters, digits, '_', '.' or '-' (not first).", "bad");
    return;
  }
  if (!navigator.mediaDevices || !window.RTCPeerConnection) {
    publishStatus("This browser cannot publish: no camera access or WebRTC (the page needs https or localhost).", "bad");
    return;
  }
  $("publish-btn").disabled = true;
  const session = { id, pc: null, media: null, location: null };
  state.publish = session;
  try {
    publishStatus("Asking for the camera…");
    session.media = await navigator.mediaDevices.getUserMedia({ video: true, audio: false });
    $("local-preview").srcObject = session.media;
    $("local-preview").hidden = false;
    const pc = new RTCPeerConnection({ iceServers: [] });  // no STUN: only this machine's addresses
    session.pc = pc;
    for (const track of session.media.getVideoTracks()) {
      pc.addTransceiver(track, { direction: "sendonly", streams: [session.media] });
    }
    await pc.setLocalDescription(await pc.createOffer());
    publishStatus("Gathering network candidates…");
    await iceGatheringDone(pc, 5000);
    publishStatus("Offering the stream to the worker…");
    const resp = await fetch("/whip/" + encodeURIComponent(id), {
      method: "POST", headers: authHeaders({ "Content-Type": "application/sdp" }), body: pc.localDescription.sdp,
    });
    if (resp.status === 401) {
      askToken("Publishing needs the API token.");
      throw new Error("the API token is missing or wrong");
    }
    if (resp.status === 503) {
      const after = resp.headers.get("Retry-After");
      throw new Error("the worker is full: it runs as many streams as it can" +
                      (after ? `; try again in ${after} s` : "") + ` (${await errorText(resp)})`);
    }
    if (resp.status !== 201) throw new Error(await errorText(resp));
    const where = resp.headers.get("Location");
    session.location = where ? new URL(where, location.href).href : null;
    await pc.setRemoteDescription({ type: "answer", sdp: await resp.text() });
    pc.addEventListener("connectionstatechange", () => {
      if (state.publish !== session) return;
      const s = pc.connectionState;
      if (s === "connected") publishStatus(`Publishing as "${id}".`, "good");
      else if (s === "failed") { publishStatus("The connection failed (ICE).", "bad"); stopPublishing(false); }
      else publishStatus(`Connection ${s}…`);
    });
    publishStatus(`Connecting as "${id}"…`);
    $("publish-stop").disabled = false;
    choose(id);
  } catch (err) {
    publishStatus("Could not publish: " + (err && err.message ? err.message : String(err)), "bad");
    await stopPublishing(true);
  }
}

async function stopPublishing(keepStatus) {
  const session = state.publish;
  state.publish = null;
  $("publish-btn").disabled = false;
  $("publish-stop").disabled = true;
  if (!session) return;
  if (session.location) {
    try {
      await fetch(session.location, { method: "DELETE", headers: authHeaders(), keepalive: true });
    } catch (_) { /* the server also ends the session when the connection closes */ }
  }
  if (session.pc) session.pc.close();
  if (session.media) for (const t of session.media.getTracks()) t.stop();
  $("local-preview").srcObject = null;
  $("local-preview").hidden = true;
  if (!keepStatus) publishStatus("Stopped.");
}

$("publish-btn").addEventListener("click", publish);
$("publish-stop").addEventListener("click", () => stopPublishing(false));
window.addEventListener("pagehide", () => {
  // keepalive lets the DELETE outlive the page, so the worker frees the stream at once.
  const session = state.publish;
  if (session && session.location) {
    fetch(session.location, { method: "DELETE", headers: authHeaders(), keepalive: true });
  }
});

start();
