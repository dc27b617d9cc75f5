"""serve over raw HTTP, as a hostile but fair client would speak it: malformed forms, forged Host
names, undecodable uploads and a failure inside the model. Every refusal is a 4xx with a message,
never a 500 or a stream that ends without a word."""

import asyncio
import http.client
import io
import json

import numpy as np
import pytest
import soundfile

from test_serve import MAX_NEW_TOKENS, Server, post

BOUNDARY = "phi4mmboundary"


@pytest.fixture(scope="module")
def server(artifacts):
    running = Server(artifacts["int4"], "--max-new-tokens", MAX_NEW_TOKENS, "--threads", 1, "--max-record-seconds", 5)
    yield running
    running.stop()


def raw(server, body: bytes, content_type: str, host: str | None = None, path: str = "/api/ask"):
    """(status, body text) of one POST with exactly these bytes."""
    port = int(server.base.rsplit(":", 1)[1].strip("/"))
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": content_type, "Content-Length": str(len(body))}
    if host is not None:
        headers["Host"] = host
    connection.request("POST", path, body=body, headers=headers)
    response = connection.getresponse()
    return response.status, response.read().decode("utf-8", "replace")


def form(*parts: bytes) -> bytes:
    return b"".join(f"--{BOUNDARY}\r\n".encode() + part + b"\r\n" for part in parts) + f"--{BOUNDARY}--\r\n".encode()


def field(name: str, value: bytes) -> bytes:
    return f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode() + value


MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
MALFORMED = {  # body, content type -> a 400 (each was a 500 before)
    "no boundary": (form(field("prompt", b"hi")), "multipart/form-data"),
    "garbage": (b"\x00\xff garbage \r\n\r\n--", MULTIPART),
    "truncated": (form(field("prompt", b"hi"))[:-20], MULTIPART),
    "empty body": (b"", MULTIPART),
    "nested multipart": (form(b'Content-Disposition: form-data; name="inner"\r\n'
                              b'Content-Type: multipart/mixed; boundary=in\r\n\r\n'
                              b"--in\r\nContent-Disposition: form-data; name=\"prompt\"\r\n\r\nhi\r\n--in--"),
                         MULTIPART),
    "100 KB part header": (form(b"X-Long: " + b"a" * 100_000 + b"\r\n" + field("prompt", b"hi")), MULTIPART),
    "a JSON body": (json.dumps({"prompt": "hi"}).encode(), "application/json"),
    "max_new_tokens as a superscript two": (form(field("prompt", b"hi"), field("max_new_tokens", "²".encode())),
                                            MULTIPART),
    "max_new_tokens far too large": (form(field("prompt", b"hi"), field("max_new_tokens", b"9" * 40)), MULTIPART),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_a_malformed_request_is_a_400_with_a_message(server, case):
    body, content_type = MALFORMED[case]
    status, text = raw(server, body, content_type)
    assert status == 400, (status, text)
    assert json.loads(text)["error"]


def test_an_undecodable_photo_or_recording_is_a_400_before_any_answer(server):
    status, body = post(server.base + "api/ask", {"prompt": "What is this?", "image": b"this is text, not a PNG" * 20})
    assert status == 400 and "the photo: cannot decode the image" in json.loads(body)["error"]
    status, body = post(server.base + "api/ask", {"prompt": "Transcribe.", "audio": b"RIFF\x00\x00garbage" * 10})
    assert status == 400 and "the recording: cannot decode the audio" in json.loads(body)["error"]


def test_a_lying_flac_header_is_stopped_at_the_time_limit(server):
    """A FLAC whose header claims an hour (or nothing) is decoded only up to the limit: 413."""
    clip = io.BytesIO()
    soundfile.write(clip, np.zeros(16000 * 7, np.float32), 16000, format="FLAC")  # 7 s > the 5 s limit
    status, body = post(server.base + "api/ask", {"prompt": "Transcribe.", "audio": clip.getvalue()})
    assert status == 413 and "this server takes at most 5 s" in json.loads(body)["error"]


@pytest.mark.parametrize("host", ["127.attacker.example", "127.0.0.1.nip.io", "localhost.attacker.example", "10.0.0.1"])
def test_a_rebound_host_name_is_refused_even_when_it_starts_with_127(server, host):
    port = server.base.rsplit(":", 1)[1].strip("/")
    origin = f"http://{host}:{port}"
    status, body = raw(server, form(field("prompt", b"hi")), MULTIPART, host=f"{host}:{port}")
    assert status == 403 and "answers only on localhost" in body
    status, _ = post(server.base + "api/ask", {"prompt": "hi"}, headers={"Origin": origin, "Host": f"{host}:{port}"})
    assert status == 403


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.1.2.3", "[::1]"])
def test_loopback_names_are_served(server, host):
    port = server.base.rsplit(":", 1)[1].strip("/")
    status, body = raw(server, form(field("prompt", b"hi"), field("max_new_tokens", b"2")), MULTIPART,
                       host=f"{host}:{port}")
    assert status == 200 and "event: done" in body


def test_a_failure_inside_the_model_ends_the_stream_with_an_error_event():
    """ONNX Runtime failing mid-answer (here: a model that raises) still ends the stream with
    `error`, not a silent cut."""
    from aiohttp import FormData
    from aiohttp.test_utils import TestClient, TestServer

    from phi4mm_edge.apps.web_app import ServeSettings, make_app
    from phi4mm_edge.runtime import GenerationOptions

    class FailingModel:
        def generate(self, *args, **kwargs):
            def pieces():
                yield "Hello"
                raise RuntimeError("[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Failed to allocate memory")
            return pieces()

    settings = ServeSettings(max_image_bytes=10**6, max_record_seconds=5,
                             options=GenerationOptions(max_new_tokens=8, temperature=0.0))

    async def ask():
        async with TestClient(TestServer(make_app(FailingModel(), settings))) as client:
            data = FormData(default_to_multipart=True)
            data.add_field("prompt", "hi")
            response = await client.post("/api/ask", data=data, headers={"Host": "localhost"})
            return response.status, await response.text()

    status, text = asyncio.run(ask())
    assert status == 200
    events = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("event: ")]
    assert events == ["piece", "error"]
    assert "the server failed to answer (RuntimeError" in text


def test_ctrl_c_stops_a_server_started_with_sigint_ignored(artifacts):
    """A background job's children start with SIGINT ignored; serve must still stop on Ctrl-C."""
    import os
    import signal
    import subprocess
    import sys

    process = subprocess.Popen([sys.executable, "-m", "phi4mm_edge.cli", "serve", str(artifacts["int4"]),
                                "--port", "0"],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1"},
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        for line in process.stdout:
            if "Ctrl+C" in line:
                break
        process.send_signal(signal.SIGINT)
        assert process.wait(timeout=20) is not None
    finally:
        process.kill()
