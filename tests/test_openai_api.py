"""serve's OpenAI-compatible API, driven by the official `openai` client against a server on a
loopback port. Greedy answers must equal what the runtime gives for the same messages (the server
and the test's own model run on one thread each, so their sums run in the same order)."""

import base64
import io
import json
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import soundfile
from PIL import Image

from phi4mm_edge.runtime import Phi4MMEdge
from test_serve import THREADS, Server
from test_speech import espeak
from test_runtime import phi4mm_edge

openai = pytest.importorskip("openai")
MAX_NEW_TOKENS = 12
MAX_RECORD_SECONDS = 5


@pytest.fixture(scope="module")
def server(artifacts):
    running = Server(artifacts["int4"], "--max-new-tokens", MAX_NEW_TOKENS, "--threads", THREADS,
                     "--max-record-seconds", MAX_RECORD_SECONDS, "--max-image-mb", 0.5, "--max-queue", 3)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base + "v1", api_key="not-needed-on-localhost", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def model(artifacts):
    return Phi4MMEdge.load(artifacts["int4"], threads=THREADS)


def png_data_url(color=(200, 40, 90), size=(96, 64)) -> tuple[str, Image.Image]:
    image = Image.new("RGB", size, color)
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode(), image


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory):
    path = espeak("What is the weather like today?", tmp_path_factory.mktemp("api") / "question.wav")
    return path.read_bytes()


def expected(model, messages, images=(), audios=(), max_new_tokens=MAX_NEW_TOKENS, adapter="auto"):
    generation = model.generate(messages, images=list(images), audios=list(audios), max_new_tokens=max_new_tokens, adapter=adapter)
    return generation.text(), generation


def test_a_text_answer_equals_run_json(client, artifacts):
    answer = client.chat.completions.create(model="phi4mm", messages=[{"role": "system", "content": "Be brief."},
                                                                      {"role": "user", "content": "Hello there"}])
    run = json.loads(phi4mm_edge("run", artifacts["int4"], "--prompt", "Hello there", "--system", "Be brief.",
                                 "--max-new-tokens", MAX_NEW_TOKENS, "--threads", THREADS, "--json").stdout)
    assert answer.choices[0].message.content == run["text"]
    assert answer.choices[0].finish_reason == ("stop" if run["finish_reason"] == "stop" else "length")
    assert answer.usage.prompt_tokens == run["prompt_tokens"] and answer.usage.completion_tokens == len(run["token_ids"])
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    assert answer.model_extra["adapter"] == "none" and answer.object == "chat.completion"


def test_streamed_chunks_add_up_and_carry_usage(client, model):
    stream = client.chat.completions.create(model="phi4mm", messages=[{"role": "user", "content": "Tell me a story"}],
                                            stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    want, generation = expected(model, "Tell me a story")
    assert text == want and len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1
    assert finish == [generation.result.finish_reason]
    assert chunks[-1].usage.completion_tokens == len(generation.result.token_ids) and not chunks[-1].choices
    assert {c.id for c in chunks} == {chunks[0].id}


def test_image_audio_and_both_route_to_their_adapters(client, model, speech_wav):
    url, image = png_data_url()
    audio_part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(speech_wav).decode(), "format": "wav"}}
    cases = {
        "vision": ([{"type": "text", "text": "What is this?"}, {"type": "image_url", "image_url": {"url": url}}],
                   "What is this?<|image_1|>", [image], []),
        "speech": ([audio_part, {"type": "text", "text": "Answer the question."}], "<|audio_1|>Answer the question.", [], [speech_wav]),
        "both": ([{"type": "image_url", "image_url": {"url": url}}, audio_part, {"type": "text", "text": "Both?"}],
                 "<|image_1|><|audio_1|>Both?", [image], [speech_wav]),
    }
    for name, (parts, runtime_text, images, audios) in cases.items():
        answer = client.chat.completions.create(model="phi4mm", messages=[{"role": "user", "content": parts}])
        want, generation = expected(model, runtime_text, images, audios)
        assert answer.choices[0].message.content == want, name
        assert answer.model_extra["adapter"] == generation.result.adapter == ("vision" if name != "speech" else "speech")


def test_multi_turn_with_media_in_an_earlier_turn(client, model):
    url, image = png_data_url((10, 200, 30))
    messages = [
        {"role": "user", "content": [{"type": "text", "text": "Look:"}, {"type": "image_url", "image_url": {"url": url}}]},
        {"role": "assistant", "content": "A green picture."},
        {"role": "user", "content": "What colour was it?"},
    ]
    answer = client.chat.completions.create(model="phi4mm", messages=messages)
    runtime_messages = [{"role": "user", "content": "Look:<|image_1|>"}, {"role": "assistant", "content": "A green picture."},
                        {"role": "user", "content": "What colour was it?"}]
    assert answer.choices[0].message.content == expected(model, runtime_messages, [image])[0]


def test_stop_sequences_max_tokens_and_a_forced_adapter(client, model):
    want, _ = expected(model, "Count with me", max_new_tokens=MAX_NEW_TOKENS)
    stop = want.strip().split(" ")[1]  # a word inside the greedy answer
    answer = client.chat.completions.create(model="phi4mm", messages=[{"role": "user", "content": "Count with me"}], stop=[stop])
    assert answer.choices[0].message.content == want[:want.index(stop)] and answer.choices[0].finish_reason == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="phi4mm", messages=[{"role": "user", "content": "Count with me"}], stop=stop, stream=True) if c.choices)
    assert streamed == want[:want.index(stop)]
    short = client.chat.completions.create(model="phi4mm", messages=[{"role": "user", "content": "Count with me"}], max_tokens=3)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    forced = client.chat.completions.create(model="phi4mm", messages=[{"role": "user", "content": "Hi"}], extra_body={"adapter": "speech"})
    assert forced.model_extra["adapter"] == "speech"
    assert forced.choices[0].message.content == expected(model, "Hi", adapter="speech")[0]


def test_models_lists_the_loaded_artifact(client, artifacts):
    assert [m.id for m in client.models.list()] == [artifacts["int4"].name]


def raw_post(server, body: bytes, headers=None):
    request = urllib.request.Request(server.base + "v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read()), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read()), dict(error.headers)


def test_errors_take_openais_shape_and_status(client, server, speech_wav):
    def refused(status, fragment, **request):
        with pytest.raises(openai.APIStatusError) as error:
            client.chat.completions.create(model="phi4mm", **request)
        assert error.value.status_code == status, error.value
        body = error.value.body
        assert set(body) >= {"message", "type", "param", "code"} and fragment in body["message"], body

    user = lambda parts: [{"role": "user", "content": parts}]  # noqa: E731
    refused(400, "unsupported content part 'video_url'", messages=user([{"type": "video_url", "video_url": {"url": "x"}}]))
    refused(400, "fetches no URLs", messages=user([{"type": "image_url", "image_url": {"url": "http://169.254.169.254/x.png"}}]))
    refused(400, "image 1: cannot decode the image", messages=user([{"type": "image_url", "image_url": {
        "url": "data:image/png;base64," + base64.b64encode(b"not a png at all" * 20).decode()}}]))
    refused(400, "audio 1: cannot decode the audio", messages=user([{"type": "input_audio", "input_audio": {
        "data": base64.b64encode(b"RIFF nonsense" * 20).decode(), "format": "wav"}}]))
    refused(400, "the context holds", messages=user("word " * 5000))
    refused(400, "n must be a whole number in 1..1", messages=user("hi"), n=2)
    refused(400, "tools is not supported", messages=user("hi"), tools=[{"type": "function", "function": {"name": "f"}}])
    refused(400, "max_tokens must be", messages=user("hi"), max_tokens=10_000)
    refused(400, "not in this artifact", messages=user("hi"), extra_body={"adapter": "music"})
    big = base64.b64encode(b"\xff" * 600_000).decode()  # over the 0.5 MB photo limit
    refused(413, "larger than 0.5 MB", messages=user([{"type": "image_url", "image_url": {"url": "data:image/png;base64," + big}}]))
    long_clip = io.BytesIO()
    soundfile.write(long_clip, np.zeros(16000 * (MAX_RECORD_SECONDS + 2), np.int16), 16000, format="WAV")
    refused(413, "this server takes at most 5 s", messages=user([{"type": "input_audio", "input_audio": {
        "data": base64.b64encode(long_clip.getvalue()).decode(), "format": "wav"}}]))
    status, body, _ = raw_post(server, b"{not json")
    assert status == 400 and body["error"]["type"] == "invalid_request_error" and "not valid JSON" in body["error"]["message"]


def test_concurrent_clients_are_queued_not_interleaved(client, model):
    prompts = [f"question {n}" for n in range(3)]
    want = {p: expected(model, p)[0] for p in prompts}
    answers = {}

    def ask(prompt):
        answers[prompt] = client.chat.completions.create(model="phi4mm", messages=[{"role": "user", "content": prompt}]).choices[0].message.content

    threads = [threading.Thread(target=ask, args=(p,)) for p in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert answers == want


def test_a_full_queue_is_503_with_retry_after(artifacts):
    """--max-queue 1: while one long answer streams, the next request is refused at once."""
    import http.client

    busy = Server(artifacts["int4"], "--max-new-tokens", 3000, "--threads", THREADS, "--max-queue", 1)
    try:
        port = int(busy.base.rsplit(":", 1)[1].strip("/"))
        streaming = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        streaming.request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json"}, body=json.dumps(
            {"model": "m", "messages": [{"role": "user", "content": "a long answer"}], "stream": True}))
        answer = streaming.getresponse()
        assert answer.status == 200 and answer.readline().startswith(b"data: ")  # it is being answered
        status, body, headers = raw_post(busy, json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]}).encode())
        assert status == 503 and body["error"]["code"] == "queue_full" and int(headers["Retry-After"]) >= 1
        streaming.close()  # the client leaves: the server stops that answer and frees the line
        for _ in range(100):
            status, body, _ = raw_post(busy, json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                                                         "max_tokens": 2}).encode())
            if status == 200:
                break
            time.sleep(0.1)
        assert status == 200 and body["usage"]["completion_tokens"] >= 1
    finally:
        busy.stop()


@pytest.fixture(scope="module")
def lan_server(artifacts):
    running = Server(artifacts["int4"], "--lan", "--host", "127.0.0.1", "--max-new-tokens", 4, "--threads", THREADS)
    yield running
    running.stop()


def test_lan_mode_needs_the_key(lan_server):
    import httpx2 as http  # the openai client's own HTTP package (installed with it)

    token = lan_server.url.split("token=")[1]
    insecure = http.Client(verify=False)  # the certificate is self-signed, made at start
    for key, status in (("wrong-key", 401), (token[:-1], 401)):
        keyed = openai.OpenAI(base_url=lan_server.base + "v1", api_key=key, max_retries=0, http_client=insecure)
        with pytest.raises(openai.APIStatusError) as error:
            keyed.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
        assert error.value.status_code == status and error.value.body["code"] == "invalid_api_key"
    keyed = openai.OpenAI(base_url=lan_server.base + "v1", api_key=token, max_retries=0, http_client=insecure)
    answer = keyed.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])
    assert answer.usage.completion_tokens >= 1


def test_follow_ups_report_cached_tokens_and_max_crops_is_a_request_field(client):
    small = Image.fromarray(np.random.default_rng(3).integers(0, 256, (25, 50, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    small.resize((1000, 500), Image.BILINEAR).save(buffer, "JPEG")  # 2 tiles at most, ~50 kB
    wide = buffer.getvalue()
    url = "data:image/jpeg;base64," + base64.b64encode(wide).decode()
    look = {"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "Look."}]}
    tokens = {}
    for max_crops in (1, 2):
        first = client.chat.completions.create(model="phi4mm", messages=[look], extra_body={"max_crops": max_crops})
        tokens[max_crops] = first.usage.prompt_tokens
    assert tokens[1] < tokens[2]
    follow_up = [look, {"role": "assistant", "content": first.choices[0].message.content}, {"role": "user", "content": "More?"}]
    second = client.chat.completions.create(model="phi4mm", messages=follow_up, extra_body={"max_crops": 2})
    # the first request's prompt is this one's start: reused, not prefilled again
    assert second.usage.prompt_tokens_details.cached_tokens >= tokens[2]
    # (that the answer equals a fresh prefill's is tests/test_prefix_cache.py's: on the int4 path
    # bit for bit, on this server's int8 prompt path within that path's own error)
    with pytest.raises(openai.BadRequestError, match="max_crops"):
        client.chat.completions.create(model="phi4mm", messages=[look], extra_body={"max_crops": 0})
