"""Re-run the classes of cases issue 32's independent probe broke against a real `phi4mm-edge
serve` process, and print what each got: its HTTP status (or what the server did), its time, the
server's peak memory above the model's own, and whether the server still answers after it.

    python -m phi4mm_edge.benchmarks.serve_probe ARTIFACT [--json]

Each memory case starts a fresh server: its baseline is the resident memory after loading the
model and answering one question (VmRSS), its figure the high-water mark (VmHWM) after the case
minus that baseline. Goals (issue 32): no death, no 500, no hang; one worst-case request at most
+1 GB, eight at once at most +2 GB.
"""

import argparse
import base64
import concurrent.futures
import io
import json
import re
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image


@dataclass
class Outcome:
    case: str
    result: str  # statuses seen, or what happened
    seconds: float
    peak_above_model_mb: float | None
    alive_after: bool


class Served:
    """`phi4mm-edge serve ARTIFACT --port 0` in a subprocess, and raw HTTP to it."""

    def __init__(self, artifact, *options):
        self.process = subprocess.Popen([sys.executable, "-m", "phi4mm_edge.cli", "serve", str(artifact), "--port", "0",
                                         *options], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in self.process.stdout:
            if match := re.search(r"(https?)://[^:/]+:(\d+)/", line):
                self.tls, self.port = match.group(1) == "https", int(match.group(2))
                break
        else:
            raise RuntimeError(f"serve did not start: {self.process.poll()}")
        self.request("POST", "/v1/chat/completions", chat("hello", max_tokens=2))  # warm: sessions and first run
        self.baseline_kb = self.memory("VmRSS")

    def memory(self, field: str) -> int:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(rf"{field}:\s+(\d+)", status).group(1))

    def peak_above_model_mb(self) -> float:
        return round((self.memory("VmHWM") - self.baseline_kb) / 1024, 1)

    def request(self, method: str, path: str, body: bytes = b"", headers: dict | None = None,
                timeout: float = 300) -> int:
        head = {"Host": "localhost", "Content-Type": "application/json", "Content-Length": str(len(body)),
                "Connection": "close", **(headers or {})}
        with self.connect(timeout) as connection:
            connection.sendall(f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(
                f"{k}: {v}\r\n".encode("utf-8", "surrogateescape") for k, v in head.items()) + b"\r\n" + body)
            first = connection.recv(64)
            while connection.recv(1 << 16):
                pass
        return int(first.split(b" ", 2)[1]) if first else 0

    def connect(self, timeout: float = 300) -> socket.socket:
        connection = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        if not self.tls:
            return connection
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE  # serve --lan's self-signed certificate
        return context.wrap_socket(connection)

    def alive(self) -> bool:
        try:
            return self.process.poll() is None and self.request("GET", "/v1/models", timeout=30) in (200, 401)
        except OSError:
            return False

    def stop(self):
        self.process.terminate()
        self.process.wait(30)


def chat(content: str, **fields) -> bytes:
    return json.dumps({"model": "m", "messages": [{"role": "user", "content": content}], **fields}).encode()


def zero_png(side: int) -> bytes:
    """An all-zero RGBA PNG: a few hundred KB on disk, side x side pixels decoded."""
    buffer = io.BytesIO()
    Image.new("RGBA", (side, side), (0, 0, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_request(png: bytes) -> bytes:
    url = "data:image/png;base64," + base64.b64encode(png).decode()
    return json.dumps({"model": "m", "max_tokens": 2, "messages": [{"role": "user", "content": [
        {"type": "text", "text": "what is this?"}, {"type": "image_url", "image_url": {"url": url}}]}]}).encode()


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, round(time.perf_counter() - started, 2)


def probe(artifact) -> list[Outcome]:
    outcomes = []

    def memory_case(name, run, *options):
        served = Served(artifact, *options)
        try:
            result, seconds = timed(run(served))
            outcomes.append(Outcome(name, str(result), seconds, served.peak_above_model_mb(), served.alive()))
        finally:
            served.stop()

    memory_case("20 MB message text (#3)", lambda s: lambda: s.request(
        "POST", "/v1/chat/completions", chat("lorem ipsum " * 1_700_000, max_tokens=2)))
    png = zero_png(8000)
    memory_case("one 8000x8000 RGBA PNG, 249 KB (#5)", lambda s: lambda: s.request(
        "POST", "/v1/chat/completions", image_request(png)), "--max-image-mb", "1")
    memory_case("eight of them at once (#5)", lambda s: lambda: sorted(concurrent.futures.ThreadPoolExecutor(8).map(
        lambda _: s.request("POST", "/v1/chat/completions", image_request(png)), range(8))), "--max-image-mb", "1")

    served = Served(artifact)
    try:
        def during_stop_string():
            pool = concurrent.futures.ThreadPoolExecutor(1)
            slow = pool.submit(served.request, "POST", "/v1/chat/completions",
                               chat("hi", max_tokens=8, stop=["x" * 2**20]))
            time.sleep(0.2)
            models, seconds = timed(lambda: served.request("GET", "/v1/models"))
            return f"stop {slow.result()}, /v1/models {models} in {seconds} s"
        result, seconds = timed(during_stop_string)
        outcomes.append(Outcome("1 MB stop string (#4)", result, seconds, None, served.alive()))

        def idle_connections():
            idle = [socket.create_connection(("127.0.0.1", served.port)) for _ in range(300)]
            served_now, seconds = timed(lambda: served.request("GET", "/v1/models", timeout=60))
            time.sleep(20)
            closed = 0
            for connection in idle:
                connection.settimeout(1)
                try:
                    closed += connection.recv(1) == b""
                except OSError:
                    pass
                connection.close()
            return f"a request beside them {served_now} in {seconds} s; {closed}/300 closed by the server after 20 s"
        result, seconds = timed(idle_connections)
        outcomes.append(Outcome("300 idle connections (#6)", result, seconds, None, served.alive()))

        def abandoned():
            for _ in range(4):
                connection = socket.create_connection(("127.0.0.1", served.port))
                body = chat("Count to a thousand", max_tokens=256, temperature=0)
                connection.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: localhost\r\nContent-Type: "
                                   b"application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
                connection.close()
            status, seconds = timed(lambda: served.request("POST", "/v1/chat/completions", chat("hi", max_tokens=2)))
            return f"the next request {status} after {seconds} s"
        result, seconds = timed(abandoned)
        outcomes.append(Outcome("4 abandoned max_tokens 256 requests (#7)", result, seconds, None, served.alive()))

        for name, body, headers in (
            ("stream + include_usage + a matching stop (#8)",
             chat("Count with me", max_tokens=12, stop=[" "], stream=True, stream_options={"include_usage": True}), {}),
            ("temperature 1e-310 (#11)", chat("hi", max_tokens=4, temperature=1e-310), {}),
            ("JSON nested 100000 deep (#12)", b"[" * 100000 + b"]" * 100000, {}),
            ('"stream": "false" (#12)', chat("hi", max_tokens=2, stream="false"), {}),
            ("a template-sized prompt of 64 KB (#3)", chat("word " * 13000, max_tokens=2), {}),
        ):
            status, seconds = timed(lambda: served.request("POST", "/v1/chat/completions", body, headers))
            outcomes.append(Outcome(name, str(status), seconds, None, served.alive()))
    finally:
        served.stop()

    served = Served(artifact, "--lan", "--host", "127.0.0.1")
    try:
        status, seconds = timed(lambda: served.request("GET", "/api/config",
                                                       headers={"X-Access-Token": "\udcff\udcfe"}))
        outcomes.append(Outcome("--lan: a token header that is not UTF-8 (#12)", str(status), seconds, None,
                                served.process.poll() is None))
    finally:
        served.stop()

    for name, options in (("serve --temperature nan (#12)", ["--temperature", "nan"]),
                          ("serve --max-crops 0 (#12)", ["--max-crops", "0"])):
        done = subprocess.run([sys.executable, "-m", "phi4mm_edge.cli", "serve", str(artifact), "--port", "0",
                               *options],
                              capture_output=True, text=True, timeout=300)
        outcomes.append(Outcome(name, f"exit {done.returncode}: {done.stderr.strip()[-100:]}", 0, None, False))
    return outcomes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifact")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    outcomes = probe(args.artifact)
    if args.json:
        print(json.dumps([asdict(o) for o in outcomes], indent=1))
        return
    for o in outcomes:
        peak = "" if o.peak_above_model_mb is None else f", peak +{o.peak_above_model_mb} MB over the model"
        print(f"{o.case}: {o.result} ({o.seconds} s{peak}; server answers after: {o.alive_after})")


if __name__ == "__main__":
    main()
