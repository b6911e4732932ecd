// stream-monitor operator page. Plain JavaScript, no build step, no dependencies.
//
// Data: GET /events (Server-Sent Events: config, streams, live, alert, feed) and
// GET /streams/{id}/live.mjpeg (the chosen stream's analysed frames). Both are GETs that a
// browser makes without custom headers, so the API token goes in ?access_token= (RFC 6750
// §2.3); fetch() calls send it as a bearer header. The alert history comes from GET /alerts
// when the page opens; incidents' evidence JPEGs (GET /evidence/...) are fetched with the
// header and shown from blob: URLs, so the token never goes into their URLs. The token lives in sessionStorage (this
// tab only) and is asked for whenever the API answers 401.
// Text from the server is always inserted with textContent, never as HTML.
"use strict";

const TOKEN_KEY = "stream-monitor-token";
const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$/;
const MAX_INCIDENTS = 200;
const NEAR_FRACTION = 0.8; // "near" the threshold: fused >= 80 % of it
const HISTORY_LIMIT = 100;  // alerts loaded from GET /alerts when the page opens
const CHART_POINTS = 300;   // per-track score samples kept for the chart (about a minute at 5/s)

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
  blobs: new Map(),      // evidence URL -> Promise of its blob: URL
  streamThreshold: null, // the chosen stream's threshold (its own, or the global one), from live events
  track: null,           // chosen track id (of the chosen stream) for the score chart
  series: new Map(),     // "stream|track" -> [{t, scores}] from live events
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
  await loadHistory();
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
    if (s.name) idCell.append(el("div", { class: "stream-name muted", text: s.name }));
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
  state.streamThreshold = null;
  if (state.track !== null && !String(state.track).startsWith(id + "|")) state.track = null;
  refreshVideo();
  drawChart();
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
    // t= makes each (re)open a new URL; "?" or "&" by whether a token was added.
    const src = withToken(`/streams/${encodeURIComponent(s.id)}/live.mjpeg`);
    img.src = src + (src.includes("?") ? "&" : "?") + `t=${Date.now()}`;
    img.hidden = false;
  }
  placeholder.hidden = live;
  if (!live) placeholder.textContent = `Stream ${s.id}: ${s.state}, waiting for frames…`;
  const problem = $("stream-error");
  problem.textContent = s.last_error ? `${s.id} last error: ${s.last_error}` : "";
  problem.hidden = !s.last_error;
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
  state.streamThreshold = live.threshold;  // the stream's own threshold when it has one
  $("viewer").style.aspectRatio = `${live.width} / ${live.height}`;
  const boxes = live.faces.map((face) => {
    const [x1, y1, x2, y2] = face.box;
    // A face's own threshold: with a calibration it depends on the detectors that scored it.
    const lvl = level(face.fused, face.threshold ?? live.threshold);
    const box = el("div", {
      class: `face-box ${lvl}` + (state.track === `${live.stream_id}|${face.track_id}` ? " chosen" : ""),
      "data-track": String(face.track_id),
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
  recordScores(live);
}

// ---------------------------------------------------------------- scores over time (chosen track)
function recordScores(live) {
  const now = Date.now();
  for (const face of live.faces) {
    if (!Object.keys(face.scores).length) continue;
    const key = `${live.stream_id}|${face.track_id}`;
    let points = state.series.get(key);
    if (!points) { points = []; state.series.set(key, points); }
    points.push({ t: now, scores: face.scores, fused: face.fused });
    if (points.length > CHART_POINTS) points.splice(0, points.length - CHART_POINTS);
  }
  // Forget tracks not seen for two minutes: the map must not grow with every face ever seen.
  for (const [key, points] of state.series) if (now - points[points.length - 1].t > 120000) state.series.delete(key);
  if (state.track === null) {
    const first = live.faces.find((f) => Object.keys(f.scores).length);
    if (first) state.track = `${live.stream_id}|${first.track_id}`;
  }
  drawChart();
}

function chooseTrack(streamId, trackId) {
  state.track = `${streamId}|${trackId}`;
  drawChart();
}

const DETECTOR_COLOURS = { styleflow: "#4c8dff", sta: "#f5a524", caddm: "#2fbf71", fused: "#e5484d" };

// One line per detector (and the fused score, red), 0..1 on the y axis, the last minute or so on x.
function drawChart() {
  const canvas = $("track-chart");
  const title = $("track-title");
  const points = state.track !== null && state.track.startsWith(state.selected + "|") ? state.series.get(state.track) : null;
  canvas.hidden = !points || points.length < 1;
  title.textContent = points ? `Track #${state.track.split("|").pop()}: scores over time` : "";
  if (canvas.hidden) return;
  const g = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 6;
  const yOf = (v) => pad + (1 - v) * (h - 2 * pad);  // 1 at the top, 0 at the bottom
  g.clearRect(0, 0, w, h);
  g.strokeStyle = "#333b46";
  g.lineWidth = 1;
  for (const v of [0, 0.5, 1]) { g.beginPath(); g.moveTo(0, yOf(v)); g.lineTo(w, yOf(v)); g.stroke(); }
  const threshold = typeof state.streamThreshold === "number" ? state.streamThreshold : state.threshold;
  if (typeof threshold === "number") {
    g.setLineDash([4, 4]); g.strokeStyle = "#8b95a3";
    const y = yOf(threshold);
    g.beginPath(); g.moveTo(0, y); g.lineTo(w, y); g.stroke(); g.setLineDash([]);
  }
  const t0 = points[0].t, span = Math.max(1, points[points.length - 1].t - t0);
  const names = new Set(points.flatMap((p) => Object.keys(p.scores)));
  const legend = [];
  for (const name of [...names, "fused"]) {
    g.strokeStyle = DETECTOR_COLOURS[name] || "#c8cdd3";
    g.lineWidth = name === "fused" ? 2 : 1.5;
    g.beginPath();
    let started = false;
    for (const p of points) {
      const v = name === "fused" ? p.fused : p.scores[name];
      if (typeof v !== "number") continue;
      const x = pad + ((p.t - t0) / span) * (w - 2 * pad), y = yOf(v);
      if (started) g.lineTo(x, y); else { g.moveTo(x, y); started = true; }
    }
    g.stroke();
    legend.push(el("span", { class: "chart-key", "data-detector": name, text: name }));
    legend[legend.length - 1].style.color = DETECTOR_COLOURS[name] || "#c8cdd3";
  }
  $("track-legend").replaceChildren(...legend);
}

// ---------------------------------------------------------------- alert history and timeline
// The latest alerts from GET /alerts (Redis's log, or this worker's memory without Redis),
// shown oldest first through onAlert like live ones: duplicates of live events are skipped.
async function loadHistory() {
  let resp;
  try {
    resp = await fetch(`/alerts?limit=${HISTORY_LIMIT}`, { headers: authHeaders(), cache: "no-store" });
  } catch (err) {
    $("history-status").textContent = "alert history unavailable: " + err.message;
    return;
  }
  if (!resp.ok) {
    $("history-status").textContent = "alert history unavailable: " + (await errorText(resp));
    return;
  }
  const body = await resp.json();
  $("history-status").textContent = body.source === "redis" ? "history: Redis" : "history: this worker since it started";
  for (const a of (body.alerts || []).slice().reverse()) onAlert(a);
}

// An evidence JPEG as a blob: URL (fetched once, with the token as a header). The file is
// written just after its event: a 404 is retried a few times.
function evidenceBlob(url) {
  let pending = state.blobs.get(url);
  if (!pending) {
    pending = (async () => {
      for (let attempt = 0; attempt < 5; attempt++) {
        const resp = await fetch(url, { headers: authHeaders() });
        if (resp.ok) return URL.createObjectURL(await resp.blob());
        if (resp.status !== 404) throw new Error(await errorText(resp));
        await new Promise((r) => setTimeout(r, 500 * (attempt + 1)));
      }
      throw new Error("evidence not found (pruned?)");
    })();
    state.blobs.set(url, pending);
    pending.catch(() => state.blobs.delete(url));
  }
  return pending;
}

// An incident left the timeline: free its images' blob: URLs.
function forgetEvidence(evidence) {
  for (const url of Object.values(evidence || {})) {
    const pending = state.blobs.get(url);
    if (!pending) continue;
    state.blobs.delete(url);
    pending.then((src) => URL.revokeObjectURL(src), () => {});
  }
}

function evidenceImages(evidence) {
  const box = el("div", { class: "evidence" });
  for (const [kind, alt] of [["frame", "the frame when the alert started"], ["faces", "the window's face crops"]]) {
    const img = el("img", { class: kind === "frame" ? "thumb" : "strip", alt, "data-kind": kind });
    evidenceBlob(evidence[kind]).then((src) => { img.src = src; }, () => img.remove());
    box.append(img);
  }
  return box;
}

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
      const gone = state.incidents.get(oldest);
      gone.li.remove();
      forgetEvidence(gone.evidence);
      state.incidents.delete(oldest);
    }
  }
  if (a.seq < (inc.payload.seq ?? -1)) return;  // a late duplicate of an older event
  inc.payload = a;
  inc.peak = Math.max(inc.peak, a.score);
  if (a.event === "start") inc.started = a.emitted_at;
  if (a.event === "update") inc.updates += 1;
  if (a.evidence && !inc.evidenceBox) {  // the first: its start
    inc.evidence = a.evidence;
    inc.evidenceBox = evidenceImages(a.evidence);
  }
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
  if (inc.evidenceBox) li.append(inc.evidenceBox);
  li.onclick = () => {
    if (state.streams.has(a.stream_id)) choose(a.stream_id);
    chooseTrack(a.stream_id, a.track_id);
  };
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
