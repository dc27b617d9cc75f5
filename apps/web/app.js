// The page: a question with an optional photo (camera snapshot or file) and recording
// (microphone or file), sent to /api/ask; the answer streams in as server-sent events read
// from the fetch body (EventSource cannot POST).

import { Recorder, fileToWav } from "./wav.js";

const $ = (id) => document.getElementById(id);
const DEFAULT_PROMPTS = { audio: "Answer the question in the audio.", image: "Describe the image." };
const state = { config: null, image: null, audio: null, stream: null, recorder: null, timer: null, busy: false };

function setPageState(name) {
  document.body.dataset.state = name; // also what the tests wait on
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = false;
  $("status").textContent = "";
}

async function errorMessage(response) {
  const body = await response.text();
  let message = body;
  try {
    message = JSON.parse(body).error;
  } catch {
    // not JSON: the text itself
  }
  return `${message} (HTTP ${response.status})`;
}

async function loadConfig() {
  const response = await fetch("/api/config");
  if (!response.ok) {
    showError(await errorMessage(response));
    setPageState("error");
    return;
  }
  state.config = await response.json();
  $("model-name").textContent = state.config.model;
  $("random-note").hidden = !state.config.random_weights;
  setPageState("ready");
}

// -- attachments ---------------------------------------------------------------------------
function chip(kind, label, onRemove, thumbnail) {
  const element = document.createElement("span");
  element.className = "chip";
  element.dataset.kind = kind;
  if (thumbnail) {
    const image = document.createElement("img");
    image.src = thumbnail;
    image.alt = label;
    element.append(image);
  }
  const remove = document.createElement("button");
  remove.type = "button";
  remove.textContent = "×";
  remove.setAttribute("aria-label", `remove the ${kind}`);
  remove.onclick = onRemove;
  element.append(label, remove);
  return element;
}

function renderAttachments() {
  const box = $("attachments");
  box.replaceChildren();
  if (state.image) {
    box.append(chip("image", "photo", () => setImage(null), state.image.url));
  }
  if (state.audio) {
    box.append(chip("audio", `recording ${state.audio.seconds.toFixed(1)} s`, () => setAudio(null)));
  }
}

function setImage(blob, name = "photo.jpg") {
  if (state.image) URL.revokeObjectURL(state.image.url);
  state.image = blob ? { blob, name, url: URL.createObjectURL(blob) } : null;
  renderAttachments();
}

function setAudio(audio) {
  state.audio = audio;
  renderAttachments();
}

// -- camera ---------------------------------------------------------------------------------
function closeCamera() {
  if (state.stream) state.stream.getTracks().forEach((track) => track.stop());
  state.stream = null;
  $("preview").hidden = true;
  $("snap").hidden = true;
  $("camera").textContent = "Camera";
}

async function openCamera() {
  try {
    state.stream = await navigator.mediaDevices.getUserMedia({
      video: { facingMode: "environment", width: { ideal: 1280 }, height: { ideal: 720 } },
    });
  } catch (error) {
    showError(`the camera is not available: ${error.message}`);
    return;
  }
  const video = $("preview");
  video.srcObject = state.stream;
  video.hidden = false;
  await video.play();
  $("snap").hidden = false;
  $("camera").textContent = "Close camera";
}

async function snap() {
  const video = $("preview");
  const canvas = document.createElement("canvas");
  canvas.width = video.videoWidth;
  canvas.height = video.videoHeight;
  canvas.getContext("2d").drawImage(video, 0, 0);
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", 0.9));
  closeCamera();
  setImage(blob, "camera.jpg");
}

// -- microphone -----------------------------------------------------------------------------
async function startRecording() {
  const recorder = new Recorder();
  try {
    await recorder.start();
  } catch (error) {
    showError(`the microphone is not available: ${error.message}`);
    return;
  }
  state.recorder = recorder;
  const button = $("record");
  button.classList.add("active");
  state.timer = setInterval(() => {
    button.textContent = `Stop ${recorder.seconds.toFixed(1)} s`;
    if (recorder.seconds >= state.config.max_record_seconds) stopRecording();
  }, 100);
  button.textContent = "Stop";
}

async function stopRecording() {
  const recorder = state.recorder;
  if (!recorder) return;
  state.recorder = null;
  clearInterval(state.timer);
  $("record").classList.remove("active");
  $("record").textContent = "Record";
  const { blob, seconds } = await recorder.stop(state.config.max_record_seconds);
  setAudio({ blob, seconds, name: "recording.wav" });
}

async function audioFileChosen(file) {
  try {
    const { blob, seconds } = await fileToWav(file);
    if (seconds > state.config.max_record_seconds) {
      showError(`the audio is ${seconds.toFixed(1)} s long; this server takes at most ${state.config.max_record_seconds} s`);
      return;
    }
    setAudio({ blob, seconds, name: "audio.wav" });
  } catch {
    // The browser cannot decode it: send it as it is; the server reads WAV, FLAC, OGG and MP3.
    setAudio({ blob: file, seconds: 0, name: file.name });
  }
}

// -- asking ---------------------------------------------------------------------------------
async function readEvents(response, handle) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const field = (name) => block.split("\n").find((line) => line.startsWith(`${name}: `))?.slice(name.length + 2);
      handle(field("event"), JSON.parse(field("data")));
    }
  }
}

function showStats(done) {
  const stats = $("stats");
  stats.dataset.adapter = done.adapter;
  const speed = done.decode_tokens_per_s === null ? "-" : done.decode_tokens_per_s.toFixed(1);
  stats.replaceChildren("adapter ", Object.assign(document.createElement("strong"), { textContent: done.adapter }),
    ` · first token ${done.ttft_ms.toFixed(0)} ms · ${speed} tokens/s · ${done.tokens} tokens`);
}

function showQuestion(prompt) {
  const question = $("question");
  const previous = question.querySelector("img");
  if (previous) URL.revokeObjectURL(previous.src);
  question.replaceChildren();
  if (state.image) {
    // Its own URL: the attachment's is revoked once the question is sent.
    question.append(Object.assign(document.createElement("img"), { src: URL.createObjectURL(state.image.blob), alt: "the photo" }));
  }
  question.append([prompt, state.audio && "[recording]"].filter(Boolean).join(" "));
  question.hidden = false;
}

async function ask(event) {
  event.preventDefault();
  if (state.busy) return;
  await stopRecording();
  const prompt = $("prompt").value.trim() || (state.audio && DEFAULT_PROMPTS.audio) || (state.image && DEFAULT_PROMPTS.image) || "";
  if (!prompt) {
    showError("type a question, or add a photo or a recording");
    return;
  }
  const form = new FormData();
  form.append("prompt", prompt);
  if (state.image) form.append("image", state.image.blob, state.image.name);
  if (state.audio) form.append("audio", state.audio.blob, state.audio.name);

  state.busy = true;
  $("send").disabled = true;
  setPageState("busy");
  $("error").hidden = true;
  showQuestion(prompt);
  $("answer").replaceChildren();
  $("answer").dataset.pieces = 0;
  $("stats").replaceChildren();
  delete $("stats").dataset.adapter;
  $("status").textContent = "thinking…";
  let finished = false;
  try {
    const response = await fetch("/api/ask", { method: "POST", body: form });
    if (!response.ok) {
      showError(await errorMessage(response));
      return;
    }
    $("prompt").value = "";
    setImage(null);
    setAudio(null);
    await readEvents(response, (name, data) => {
      if (name === "queue") {
        $("status").textContent = `waiting: ${data.ahead} ${data.ahead === 1 ? "request" : "requests"} ahead`;
      } else if (name === "piece") {
        $("status").textContent = "";
        $("answer").append(data.text);
        $("answer").dataset.pieces = Number($("answer").dataset.pieces) + 1;
      } else if (name === "done") {
        finished = true;
        showStats(data);
      } else if (name === "error") {
        finished = true;
        showError(data.message);
      }
    });
    if (!finished) showError("the answer was cut off: the server stopped");
  } catch (error) {
    showError(`the server cannot be reached: ${error.message}`);
  } finally {
    state.busy = false;
    $("send").disabled = false;
    $("status").textContent = "";
    setPageState($("error").hidden ? "done" : "error");
  }
}

// -- wiring ---------------------------------------------------------------------------------
const mediaAvailable = Boolean(navigator.mediaDevices && navigator.mediaDevices.getUserMedia);
if (!mediaAvailable) {
  // Not a secure context (plain http to another machine): the file buttons open the phone's own
  // camera and recorder instead.
  $("camera").disabled = true;
  $("record").disabled = true;
  $("image-file").setAttribute("capture", "environment");
  $("audio-file").setAttribute("capture", "");
  $("insecure").hidden = false;
}
$("camera").onclick = () => (state.stream ? closeCamera() : openCamera());
$("snap").onclick = snap;
$("record").onclick = () => (state.recorder ? stopRecording() : startRecording());
$("image-file").onchange = (event) => {
  const file = event.target.files[0];
  if (file) setImage(file, file.name);
  event.target.value = "";
};
$("audio-file").onchange = (event) => {
  const file = event.target.files[0];
  if (file) audioFileChosen(file);
  event.target.value = "";
};
$("ask").onsubmit = ask;
$("prompt").addEventListener("keydown", (event) => {
  // Enter sends, Shift+Enter starts a new line (as in chat apps); a phone's Enter key stays a newline.
  if (event.key === "Enter" && !event.shiftKey && !navigator.userAgentData?.mobile && !/Mobi/.test(navigator.userAgent)) {
    event.preventDefault();
    $("ask").requestSubmit();
  }
});
loadConfig();
