"""`phi4mm-edge serve`: the web page in a real headless Chromium (Debian's, driven by Playwright)
with a synthetic camera and microphone, against the server run as the command a user runs."""

import base64
import io
import json
import os
import queue
import re
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import soundfile

from phi4mm_edge.runtime import Phi4MMEdge

from test_speech import espeak

playwright_sync = pytest.importorskip("playwright.sync_api")
REPO = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
MAX_NEW_TOKENS = 24
THREADS = 1  # the server and the test's own runtime sum in the same order, so greedy answers can be compared exactly
MAX_IMAGE_MB = 0.5
MAX_RECORD_SECONDS = 5
PROMPT = "What can an on-device assistant do?"

pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium (apt-get install chromium)")


class Server:
    """`phi4mm-edge serve ...` in a subprocess; `url` is the address it printed."""

    def __init__(self, *args):
        self.process = subprocess.Popen([sys.executable, "-m", "phi4mm_edge.cli", "serve", *map(str, args), "--port", "0"],
                                        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.lines, ready = [], queue.Queue()

        def read_output():
            for line in self.process.stdout:
                self.lines.append(line)
                if "Ctrl+C" in line:  # the last line before it serves
                    ready.put(True)
            ready.put(False)

        threading.Thread(target=read_output, daemon=True).start()
        assert ready.get(timeout=60), self.output
        self.url = re.search(r"https?://\S+", self.output).group(0)
        self.base = self.url.split("?")[0]

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def stop(self):
        self.process.terminate()
        self.process.wait(timeout=10)


@pytest.fixture(scope="module")
def server(artifacts):
    running = Server(artifacts["int4"], "--max-new-tokens", MAX_NEW_TOKENS, "--threads", THREADS,
                     "--max-image-mb", MAX_IMAGE_MB, "--max-record-seconds", MAX_RECORD_SECONDS)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def lan_server(artifacts):
    # --host 127.0.0.1: the test reaches it over loopback only; long answers make requests overlap.
    running = Server(artifacts["int4"], "--lan", "--host", "127.0.0.1", "--max-new-tokens", 400, "--threads", THREADS)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def runtime_model(artifacts):
    return Phi4MMEdge.load(artifacts["int4"], threads=THREADS)


def write_y4m(path: Path, width=640, height=480) -> Path:
    """A still synthetic camera (one frame, which Chromium repeats): stripes and a square, YUV 4:2:0."""
    luma = np.tile(np.linspace(40, 220, width, dtype=np.uint8), (height, 1))
    luma[100:200, 160:260] = 250
    chroma_u = np.full((height // 2, width // 2), 110, np.uint8)
    chroma_v = np.tile(np.linspace(60, 200, height // 2, dtype=np.uint8)[:, None], (1, width // 2))
    path.write_bytes(f"YUV4MPEG2 W{width} H{height} F10:1 Ip A1:1 C420jpeg\n".encode()
                     + b"FRAME\n" + luma.tobytes() + chroma_u.tobytes() + chroma_v.tobytes())
    return path


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    media = tmp_path_factory.mktemp("fake-media")
    camera = write_y4m(media / "camera.y4m")
    microphone = espeak("What is the weather like today?", media / "microphone.wav")
    with playwright_sync.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--use-fake-ui-for-media-stream",  # grants the camera and microphone without a prompt
            "--use-fake-device-for-media-stream",
            f"--use-file-for-fake-video-capture={camera}",
            f"--use-file-for-fake-audio-capture={microphone}",
        ])
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser):
    context = browser.new_context()
    yield context.new_page()
    context.close()


def open_page(page, url):
    page.goto(url)
    page.wait_for_selector("body[data-state=ready]")


def ask_in_page(page, prompt):
    page.fill("#prompt", prompt)
    page.click("#send")
    page.wait_for_selector("body[data-state=done], body[data-state=error]")


# Chromium does not hand a fetch's FormData with blobs to Playwright's request events, so the test
# wraps fetch in the page and keeps each question's fields (files as base64).
RECORD_FORMS = """
window.sentForms = [];
const originalFetch = window.fetch;
window.fetch = async (url, options) => {
  if (options && options.body instanceof FormData) {
    const fields = {};
    for (const [name, value] of options.body) {
      fields[name] = typeof value === "string" ? btoa(unescape(encodeURIComponent(value))) : await new Promise((resolve) => {
        const reader = new FileReader();
        reader.onload = () => resolve(reader.result.split(",")[1]);
        reader.readAsDataURL(value);
      });
    }
    window.sentForms.push(fields);
  }
  return originalFetch(url, options);
};
"""


def sent_forms(page) -> list[dict]:
    """The questions the page sent: [{field name: bytes}]."""
    return [{name: base64.b64decode(value) for name, value in form.items()} for form in page.evaluate("window.sentForms")]


def multipart(fields: dict) -> tuple[bytes, str]:
    boundary = "phi4mm-test-boundary"
    body = b""
    for name, value in fields.items():
        filename = f'; filename="{name}"' if isinstance(value, bytes) else ""
        data = value if isinstance(value, bytes) else value.encode()
        body += f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"{filename}\r\n\r\n'.encode() + data + b"\r\n"
    return body + f"--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post(url, fields, headers=(), context=None):
    """(status, body text) of a multipart POST."""
    body, content_type = multipart(fields)
    request = urllib.request.Request(url, data=body, headers={"Content-Type": content_type, **dict(headers)})
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_a_text_question_streams_the_runtimes_greedy_answer(server, page, runtime_model):
    open_page(page, server.url)
    ask_in_page(page, PROMPT)
    expected = runtime_model.generate(PROMPT, max_new_tokens=MAX_NEW_TOKENS).text()
    assert page.text_content("#answer") == expected
    assert int(page.get_attribute("#answer", "data-pieces")) > 1  # it arrived in pieces, not at the end
    assert page.get_attribute("#stats", "data-adapter") == "none"
    assert re.search(r"adapter none · first token \d+ ms · [\d.]+ tokens/s", page.text_content("#stats"))


def test_a_camera_snapshot_is_answered_with_the_vision_adapter(server, page, runtime_model):
    page.add_init_script(RECORD_FORMS)
    open_page(page, server.url)
    page.click("#camera")
    page.wait_for_function("document.getElementById('preview').videoWidth > 0")
    page.click("#snap")
    page.wait_for_selector(".chip[data-kind=image]")
    ask_in_page(page, "What is in the picture?")
    assert page.get_attribute("#stats", "data-adapter") == "vision"
    photo = sent_forms(page)[0]["image"]
    assert photo[:3] == b"\xff\xd8\xff"  # the page sent a JPEG of the camera frame
    expected = runtime_model.generate("What is in the picture?", images=[photo], max_new_tokens=MAX_NEW_TOKENS).text()
    assert page.text_content("#answer") == expected


def test_a_microphone_recording_is_sent_as_wav_and_answered_with_the_speech_adapter(server, page, runtime_model):
    page.add_init_script(RECORD_FORMS)
    open_page(page, server.url)
    page.click("#record")
    page.wait_for_function("/Stop [1-9]/.test(document.getElementById('record').textContent)")  # at least a second
    page.click("#record")
    page.wait_for_selector(".chip[data-kind=audio]")
    page.click("#send")  # no text: the page asks its default question about the recording
    page.wait_for_selector("body[data-state=done], body[data-state=error]")
    assert page.get_attribute("#stats", "data-adapter") == "speech"
    sent = sent_forms(page)[0]
    wav = sent["audio"]
    samples, rate = soundfile.read(io.BytesIO(wav))  # libsndfile reads what the page wrote
    assert 1.0 <= len(samples) / rate <= MAX_RECORD_SECONDS
    assert np.abs(samples).max() > 0.05  # the fake microphone's speech, not silence
    prompt = sent["prompt"].decode()
    expected = runtime_model.generate(prompt, audios=[wav], max_new_tokens=MAX_NEW_TOKENS).text()
    assert page.text_content("#answer") == expected


def test_an_oversized_photo_is_refused_with_the_limit_in_the_page(server, page):
    open_page(page, server.url)
    too_big = int(MAX_IMAGE_MB * 1e6) + 1
    page.set_input_files("#image-file", files=[{"name": "big.jpg", "mimeType": "image/jpeg", "buffer": b"\xff" * too_big}])
    ask_in_page(page, "What is this?")
    error = page.text_content("#error")
    assert "the photo is larger than 0.5 MB" in error and "(HTTP 413)" in error
    status, body = post(server.base + "api/ask", {"prompt": "What is this?", "image": b"\xff" * too_big})
    assert status == 413 and "larger than 0.5 MB" in json.loads(body)["error"]


def test_a_recording_over_the_time_limit_is_refused(server):
    clip = io.BytesIO()
    soundfile.write(clip, np.zeros(16000 * (MAX_RECORD_SECONDS + 1), np.float32), 16000, format="WAV")
    status, body = post(server.base + "api/ask", {"prompt": "Transcribe.", "audio": clip.getvalue()})
    assert status == 413
    assert json.loads(body)["error"] == f"the recording is {MAX_RECORD_SECONDS + 1:.1f} s long; this server takes at most " \
                                        f"{MAX_RECORD_SECONDS} s (serve --max-record-seconds)"


def test_the_local_server_refuses_other_sites_and_other_host_names(server):
    status, body = post(server.base + "api/ask", {"prompt": "hi"}, headers={"Origin": "http://example.com"})
    assert status == 403 and "only this server's own page" in json.loads(body)["error"]
    request = urllib.request.Request(server.base, headers={"Host": "rebound.example.com"})  # DNS rebinding
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=10)
    assert refused.value.code == 403


UNVERIFIED = ssl._create_unverified_context()  # the LAN server's certificate is self-signed, made at start


def test_lan_mode_needs_the_token_and_serves_https(lan_server, browser):
    assert lan_server.url.startswith("https://127.0.0.1:") and "?token=" in lan_server.url
    assert "▀" in lan_server.output or "█" in lan_server.output  # the URL as a QR code
    assert "SHA-256" in lan_server.output
    for path in ("", "api/config"):
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(lan_server.base + path, context=UNVERIFIED, timeout=10)
        assert refused.value.code == 403 and "access token" in refused.value.read().decode()
    token = lan_server.url.split("token=")[1]
    request = urllib.request.Request(lan_server.base + "api/config", headers={"X-Access-Token": token})
    assert urllib.request.urlopen(request, context=UNVERIFIED, timeout=10).status == 200
    assert post(lan_server.base + "api/ask", {"prompt": "hi"}, headers={"X-Access-Token": token[:-1]}, context=UNVERIFIED)[0] == 403

    # The printed URL in a browser: the token becomes a cookie, the page is a secure context (camera and microphone work).
    context = browser.new_context(ignore_https_errors=True)
    page = context.new_page()
    open_page(page, lan_server.url)
    assert page.url == lan_server.base  # the token left the address bar
    assert page.evaluate("window.isSecureContext && Boolean(navigator.mediaDevices)")
    page.click("#record")
    page.wait_for_function("/Stop [0-9]/.test(document.getElementById('record').textContent)")
    context.close()


def test_concurrent_requests_are_answered_one_after_the_other(lan_server):
    token = lan_server.url.split("token=")[1]
    body, content_type = multipart({"prompt": PROMPT})
    events, lock, first_piece = [], threading.Lock(), threading.Event()

    def ask(name):
        request = urllib.request.Request(lan_server.base + "api/ask", data=body,
                                         headers={"Content-Type": content_type, "X-Access-Token": token})
        with urllib.request.urlopen(request, context=UNVERIFIED, timeout=60) as response:
            for line in response:
                if line.startswith(b"event: "):
                    with lock:
                        events.append((name, line[7:].strip().decode()))
                    first_piece.set()

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    assert first_piece.wait(30)
    second = threading.Thread(target=ask, args=("second",))
    second.start()
    first.join(60)
    second.join(60)
    second_events = [event for name, event in events if name == "second"]
    assert second_events[0] == "queue"  # told, while the first answer streams, that one request is ahead
    answers = [name for name, event in events if event != "queue"]
    first_count = answers.count("first")
    assert answers == ["first"] * first_count + ["second"] * (len(answers) - first_count), "the answers interleaved"
    assert events[-1] == ("second", "done") and ("first", "done") in events
    assert second_events.count("piece") > 1


def test_the_page_fits_a_phone_screen(server, browser, tmp_path):
    context = browser.new_context(viewport={"width": 390, "height": 844}, device_scale_factor=2, is_mobile=True, has_touch=True)
    page = context.new_page()
    open_page(page, server.url)
    page.click("#camera")
    page.wait_for_function("document.getElementById('preview').videoWidth > 0")
    page.click("#snap")
    ask_in_page(page, "What is in the picture?")
    assert page.get_attribute("#stats", "data-adapter") == "vision"
    assert page.evaluate("document.documentElement.scrollWidth") <= 390  # nothing sticks out sideways
    assert page.evaluate("document.getElementById('send').getBoundingClientRect().height") >= 44  # a touch target
    # The README's screenshot is this one; it is rewritten only when asked, so a test run leaves the tree clean.
    shot = REPO / "docs" / "serve-phone.png" if os.environ.get("PHI4MM_UPDATE_DOCS") == "1" else tmp_path / "serve-phone.png"
    page.screenshot(path=shot)
    assert shot.stat().st_size > 10_000
    context.close()
