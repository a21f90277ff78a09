// The kiosk page: one session over WebRTC (docs/serving.md). No build step, no dependencies.
// window.kiosk holds what the page measured (read by the headless-browser test).
"use strict";
const $ = (id) => document.getElementById(id);
const kiosk = (window.kiosk = { state: "idle", firstFrameMs: null, speechMs: [], framesDecoded: 0, audioEnergy: 0, events: [], error: null });
let pc = null, channel = null, session = null, t0 = 0, statsTimer = null, speechAt = null;

$("key").value = new URLSearchParams(location.search).get("key") || localStorage.getItem("emote-key") || "";
$("example").onchange = () => ($("upload").hidden = $("example").value !== "");
$("source").onchange = () => ($("audiofile").hidden = $("source").value !== "file");

function status(text) { kiosk.state = text; $("status").textContent = text; }

async function api(method, path, body, headers = {}) {
  const r = await fetch(path, { method, body, headers: { "X-API-Key": $("key").value, ...headers } });
  const data = await r.json().catch(() => ({ error: r.statusText }));
  if (!r.ok) throw new Error(`${r.status} ${data.error || r.statusText}`);
  return data;
}

async function audioTrack() {
  if ($("source").value === "mic") {
    const stream = await navigator.mediaDevices.getUserMedia({ audio: { echoCancellation: true, noiseSuppression: false } });
    watchSpeech(stream);
    return stream.getAudioTracks()[0];
  }
  const file = $("audiofile").files[0];
  if (!file) throw new Error("choose an audio file");
  const ctx = new AudioContext();
  const buffer = await ctx.decodeAudioData(await file.arrayBuffer());
  const src = ctx.createBufferSource();
  src.buffer = buffer;
  const dest = ctx.createMediaStreamDestination();
  src.connect(dest);
  src.start(ctx.currentTime + 0.5);
  watchSpeech(dest.stream);
  return dest.stream.getAudioTracks()[0];
}

// when the local audio gets loud: the start of an utterance, for the speech -> avatar latency
function watchSpeech(stream) {
  const ctx = new AudioContext();
  const analyser = ctx.createAnalyser();
  ctx.createMediaStreamSource(stream).connect(analyser);
  const data = new Float32Array(analyser.fftSize);
  let loud = false;
  const tick = () => {
    if (!pc) return;
    analyser.getFloatTimeDomainData(data);
    const rms = Math.sqrt(data.reduce((a, x) => a + x * x, 0) / data.length);
    if (rms > 0.003 && !loud && speechAt === null) speechAt = performance.now();
    loud = rms > 0.003;
    requestAnimationFrame(tick);
  };
  tick();
}

function onEvent(e) {
  kiosk.events.push(e);
  if (e.type === "speaking_started") {
    status("speaking");
    if (speechAt !== null) {
      kiosk.speechMs.push(Math.round(performance.now() - speechAt));
      $("speech").textContent = `${kiosk.speechMs.at(-1)} ms`;
      speechAt = null;
    }
  } else if (e.type === "speaking_stopped") status("listening");
  else if (e.type === "error" || e.type === "closed") status(`${e.type}: ${e.message || e.reason}`);
}

async function stats() {
  if (!pc) return;
  const report = await pc.getStats();
  report.forEach((s) => {
    if (s.type !== "inbound-rtp") return;
    if (s.kind === "video") kiosk.framesDecoded = s.framesDecoded || 0;
    if (s.kind === "audio") kiosk.audioEnergy = s.totalAudioEnergy || 0;
  });
  $("frames").textContent = kiosk.framesDecoded;
  $("energy").textContent = kiosk.audioEnergy.toFixed(4);
}

async function start() {
  $("start").disabled = true;
  kiosk.error = null;
  try {
    localStorage.setItem("emote-key", $("key").value);
    status("creating a session");
    const form = new FormData();
    if ($("example").value) form.append("example", $("example").value);
    else if ($("upload").files[0]) form.append("image", $("upload").files[0]);
    else throw new Error("choose a portrait to upload");
    session = await api("POST", "/sessions", form);
    t0 = performance.now();
    pc = new RTCPeerConnection({ iceServers: [] });
    pc.addTrack(await audioTrack());
    pc.addTransceiver("video", { direction: "recvonly" });
    channel = pc.createDataChannel("events");
    channel.onmessage = (m) => onEvent(JSON.parse(m.data));
    const remote = new MediaStream();
    pc.ontrack = (e) => { remote.addTrack(e.track); $("avatar").srcObject = remote; };
    pc.onconnectionstatechange = () => { if (["failed", "closed"].includes(pc?.connectionState)) stop(`connection ${pc.connectionState}`); };
    const video = $("avatar");
    const firstFrame = () => {
      kiosk.firstFrameMs = Math.round(performance.now() - t0);
      $("first").textContent = `${kiosk.firstFrameMs} ms`;
    };
    if (video.requestVideoFrameCallback) video.requestVideoFrameCallback(firstFrame);
    else video.addEventListener("loadeddata", firstFrame, { once: true });
    await pc.setLocalDescription(await pc.createOffer());
    await new Promise((ok) => (pc.iceGatheringState === "complete" ? ok() : pc.addEventListener("icegatheringstatechange", () => pc.iceGatheringState === "complete" && ok())));
    const answer = await api("POST", session.offer, JSON.stringify(pc.localDescription), { "Content-Type": "application/json" });
    await pc.setRemoteDescription(answer);
    statsTimer = setInterval(stats, 500);
    $("clear").disabled = $("stop").disabled = $("saybtn").disabled = false;
    status("listening");
  } catch (err) {
    kiosk.error = String(err.message || err);
    status(`error: ${kiosk.error}`);
    stop();
  }
}

function stop(why) {
  clearInterval(statsTimer);
  if (pc) pc.close();
  pc = channel = null;
  if (session) api("DELETE", `/sessions/${session.id}`).catch(() => {});
  session = null;
  $("start").disabled = false;
  $("clear").disabled = $("stop").disabled = $("saybtn").disabled = true;
  if (why) status(why);
}

$("start").onclick = start;
$("stop").onclick = () => stop("stopped");
$("clear").onclick = () => { if (channel && channel.readyState === "open") channel.send(JSON.stringify({ type: "clear" })); speechAt = null; };
$("sayform").onsubmit = (e) => {
  e.preventDefault();
  const text = $("say").value.trim();
  if (text && channel && channel.readyState === "open") { channel.send(JSON.stringify({ type: "say", text })); speechAt = performance.now(); }
};
