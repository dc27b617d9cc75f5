"""Bounded property-based fuzzing (hypothesis) of the two documents the project takes from outside:
an artifact's manifest.json, and the OpenAI API's request body. The property: whatever they say,
the answer is a clear refusal (Phi4MMError; an HTTP 4xx in OpenAI's error shape) or a normal
answer, never a traceback from inside ONNX Runtime, a 500, or a silently wrong shape (issue 32:
manifest sizes that disagree with the graphs gave 7 tracebacks; deep JSON a 500).

Bounded: a fixed number of examples, derandomized, so a run takes the same time every time."""

import asyncio
import io
import json
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from phi4mm_edge import Phi4MMError
from phi4mm_edge.runtime import GenerationOptions, Phi4MMEdge

FUZZ = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def numeric_paths(value, path=()):
    """Every path to a number (or a list of numbers) in the manifest, e.g. ('model', 'hidden_size')."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from numeric_paths(item, (*path, key))
    elif isinstance(value, list) and value and all(isinstance(v, (int, float)) for v in value):
        yield path
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield path


def changed(value):
    """Values a number in the manifest could be changed to: near it, far from it, another type."""
    if isinstance(value, list):
        return st.sampled_from([value[:-1], value + value[-1:], [0] * len(value), [v * 2 for v in value], []])
    return st.sampled_from([0, -1, 1, value + 1, value - 1, value * 2, value // 2, 2**31, 1.5, "8", None, True])


@pytest.fixture(scope="module")
def fuzzed_artifact(artifacts, tmp_path_factory):
    folder = tmp_path_factory.mktemp("fuzz") / "artifact"
    shutil.copytree(artifacts["int4"], folder)
    return folder, json.loads((folder / "manifest.json").read_text())


def media():
    photo = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (300, 500, 3), np.uint8)).save(photo, format="PNG")
    return photo.getvalue(), (np.sin(np.arange(16000, dtype=np.float32) / 9.0) * 0.3, 16000)


@FUZZ
@given(data=st.data())
def test_any_change_to_a_manifest_number_is_refused_or_harmless(fuzzed_artifact, data):
    folder, original = fuzzed_artifact
    manifest = json.loads(json.dumps(original))
    path = data.draw(st.sampled_from(sorted(set(numeric_paths(manifest)))), label="field")
    holder = manifest
    for key in path[:-1]:
        holder = holder[key]
    holder[path[-1]] = data.draw(changed(holder[path[-1]]), label="value")
    (folder / "manifest.json").write_text(json.dumps(manifest))
    photo, clip = media()
    try:
        model = Phi4MMEdge.load(folder)
        model.generate("hi", max_new_tokens=2).text()
        model.generate("what is this?", images=[photo], audios=[clip],
                       options=GenerationOptions(max_new_tokens=2)).text()
    except Phi4MMError:
        pass  # a clear refusal: what a damaged manifest must get


def chat_bodies():
    """JSON request bodies: OpenAI's fields with valid, wrong-typed and extreme values, and noise."""
    scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**64, 2**64), st.floats(allow_nan=True),
                        st.text(max_size=20))
    json_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                                st.dictionaries(st.text(max_size=8), inner,
                                                                                max_size=4)),
                               max_leaves=12)
    message = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant", "developer", "tool", 1]),
                                     "content": st.one_of(st.text(max_size=40), json_values)})
    fields = {
        "model": st.text(max_size=8), "messages": st.one_of(st.lists(message, min_size=1, max_size=3), json_values),
        "max_tokens": st.one_of(st.integers(-5, 40), json_values),
        "temperature": st.one_of(st.floats(-1, 3), json_values),
        "top_p": st.one_of(st.floats(-0.5, 1.5), json_values), "seed": st.one_of(st.integers(-5, 2**70), json_values),
        "stop": st.one_of(st.text(max_size=5), st.lists(st.text(max_size=5), max_size=6), json_values),
        "stream": st.one_of(st.booleans(), json_values), "stream_options": json_values,
        "adapter": st.one_of(st.sampled_from(["auto", "none", "vision", "speech", "nope"]), json_values),
        "max_crops": st.one_of(st.integers(-2, 40), json_values), "n": json_values, "response_format": json_values,
        "logprobs": json_values, "tools": json_values,
    }
    return st.fixed_dictionaries({}, optional=fields)


@pytest.fixture(scope="module")
def api_model(artifacts):
    return Phi4MMEdge.load(artifacts["int4"])


@FUZZ
@given(body=chat_bodies())
def test_any_request_body_is_answered_or_refused_never_a_500(api_model, body):
    from aiohttp.test_utils import TestClient, TestServer

    from phi4mm_edge.apps.server_state import ServeSettings
    from phi4mm_edge.apps.web_app import make_app

    settings_ = ServeSettings(max_image_bytes=10**6, max_record_seconds=5, options=GenerationOptions(max_new_tokens=8))

    async def post():
        async with TestClient(TestServer(make_app(api_model, settings_))) as client:
            response = await client.post("/v1/chat/completions", data=json.dumps(body),
                                         headers={"Host": "localhost", "Content-Type": "application/json"})
            return response.status, await response.text()

    status, text = asyncio.run(post())
    assert status in (200, 400, 413), (status, text)
    if status != 200:
        assert json.loads(text)["error"]["message"]
    elif not body.get("stream"):
        assert json.loads(text)["choices"][0]["message"]["role"] == "assistant"
