"""The OpenAI-compatible API of `serve`: `POST /v1/chat/completions` and `GET /v1/models`, so that
the apps, SDKs and tools written for OpenAI's protocol (and for llama.cpp's server, Ollama, LM
Studio, vLLM) run against the local model unchanged.

It shares the page's process, its one-generation-at-a-time queue and its upload limits. Images
come as `data:` URLs only: the server never fetches a URL (it is offline by design, and a server
that fetches what a request names can be turned against the network it sits on). Errors take
OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.

Beyond the protocol: an optional `"adapter"` field (auto, none, vision, speech) forces the LoRA
adapter, and every response says which one answered (`"adapter"`).
"""

import asyncio
import base64
import binascii
import json
import time
import uuid
from dataclasses import dataclass, field

from aiohttp import web

from ..errors import Phi4MMError
from ..runtime import GenerationOptions
from ..runtime.audio import SAMPLE_RATE, AudioTooLong, load_audio
from ..runtime.image import ImagesBusy, load_image
from .request_queue import QueueFull
from .server_state import MODEL, REQUESTS, SETTINGS, on_model

API_PREFIX = "/v1/"
AUDIO_FORMATS = ("wav", "mp3", "flac", "ogg")
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_STOP_CHARS = 1000  # per stop sequence: far above any real one (llama.cpp's and Ollama's are words or tags)
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "logit_bias", "audio", "modalities", "prediction")


class ApiError(Exception):
    """A request refused in OpenAI's error shape."""

    TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
             404: "not_found_error", 408: "invalid_request_error", 413: "invalid_request_error", 503: "server_error"}

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None, headers=None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def response(self) -> web.Response:
        body = {"error": {"message": self.message, "type": self.TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}
        response = web.json_response(body, status=self.status, headers=self.headers)
        if self.status == 408:  # the rest of that body may still come: the connection cannot carry another request
            response.force_close()
        return response


@dataclass
class ChatRequest:
    """A chat-completions request, checked and turned into the runtime's terms."""

    messages: list  # {role, content} with <|image_N|> / <|audio_N|> where the parts were
    images: list = field(default_factory=list)  # decoded later, off the event loop
    audios: list = field(default_factory=list)
    options: GenerationOptions = field(default_factory=GenerationOptions)  # serve's, changed by the request's fields
    stream: bool = False
    include_usage: bool = False
    stop: list = field(default_factory=list)


def _number(body: dict, name: str, low: float, high: float, whole: bool = False):
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (whole and not isinstance(value, int)) \
            or not low <= value <= high:
        kind = "a whole number" if whole else "a number"
        raise ApiError(400, f"{name} must be {kind} in {low}..{high}, not {value!r}", param=name)
    return value


def _data_url(url: str, limit: int) -> bytes:
    """The bytes of a `data:[mime];base64,...` URL; a remote URL is refused (nothing is fetched)."""
    if not isinstance(url, str):
        raise ApiError(400, "image_url.url must be a string", param="messages")
    if url.startswith(("http://", "https://", "ftp://", "file:")):
        raise ApiError(400, "this server is offline and fetches no URLs: send the image inline as a data URL "
                            "(data:image/png;base64,...)", param="messages", code="url_not_fetched")
    header, comma, payload = url.partition(",")
    if not url.startswith("data:") or not comma or ";base64" not in header:
        raise ApiError(400, "image_url.url must be a data URL, data:image/...;base64,<data>", param="messages")
    return _base64(payload, limit, "the image")


def _base64(text, limit: int, what: str) -> bytes:
    if not isinstance(text, str):
        raise ApiError(400, f"{what} must be base64 text", param="messages")
    if len(text) * 3 // 4 > limit:
        raise ApiError(413, f"{what} is larger than {limit / 1e6:.3g} MB, this server's limit", param="messages",
                       code="request_too_large")
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(400, f"{what} is not valid base64", param="messages") from None


def _content(content, role: str, request: ChatRequest, limits) -> str:
    """A message's content as the runtime's text, media parts replaced by their placeholders."""
    if isinstance(content, str):
        return content
    if content is None and role == "assistant":
        return ""
    if not isinstance(content, list):
        raise ApiError(400, f"a {role} message's content must be a string or a list of parts", param="messages")
    text = []
    for part in content:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            text.append(part["text"])
        elif kind == "image_url" and role == "user":
            image_url = part.get("image_url")
            url = image_url.get("url") if isinstance(image_url, dict) else image_url
            request.images.append(_data_url(url, limits.max_image_bytes))
            text.append(f"<|image_{len(request.images)}|>")
        elif kind == "input_audio" and role == "user":
            audio = part.get("input_audio") if isinstance(part.get("input_audio"), dict) else {}
            if audio.get("format") not in AUDIO_FORMATS:
                raise ApiError(400, f"input_audio.format must be one of {AUDIO_FORMATS}, not {audio.get('format')!r}",
                               param="messages")
            request.audios.append(_base64(audio.get("data"), limits.max_audio_bytes, "the audio"))
            text.append(f"<|audio_{len(request.audios)}|>")
        else:
            raise ApiError(400, f"unsupported content part {kind!r} in a {role} message: this server takes text, "
                                f"image_url (data URLs) and input_audio parts in user messages", param="messages")
    return "".join(text)


def parse_request(body, limits, defaults: GenerationOptions) -> ChatRequest:
    """The JSON body of a chat-completions request -> a ChatRequest whose options are `defaults` (serve's)
    changed by the request's fields; ApiError(400/413) otherwise."""
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    for name in UNSUPPORTED:
        if body.get(name):
            raise ApiError(400, f"{name} is not supported by this server", param=name, code="unsupported_parameter")
    if body.get("logprobs"):
        raise ApiError(400, "logprobs are not supported by this server", param="logprobs", code="unsupported_parameter")
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name):
            raise ApiError(400, f"{name} is not supported (only 0)", param=name, code="unsupported_parameter")
    if _number(body, "n", 1, 1, whole=True) not in (None, 1):
        raise ApiError(400, "n must be 1", param="n")
    response_format = body.get("response_format")
    if response_format not in (None, {"type": "text"}):
        raise ApiError(400, "only the text response_format is supported", param="response_format")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ApiError(400, "messages must be a non-empty list", param="messages")
    request = ChatRequest(messages=[])
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        role = "system" if role == "developer" else role
        if role not in ("system", "user", "assistant"):
            raise ApiError(400, f"message role {role!r} is not supported: use system, user or assistant",
                           param="messages")
        request.messages.append({"role": role, "content": _content(message.get("content"), role, request, limits)})
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    changes = {}  # GenerationOptions fields the request sets; serve's defaults stand for the rest
    if max_tokens is not None:
        most = defaults.max_new_tokens
        changes["max_new_tokens"] = _number({"max_tokens": max_tokens}, "max_tokens", 1, most, whole=True)
    for name, low, high, whole in (("temperature", 0, 2, False), ("top_p", 0, 1, False), ("seed", 0, 2**63 - 1, True)):
        value = _number(body, name, low, high, whole)
        if value is not None:
            changes[name] = value
    if changes.get("top_p") == 0:
        raise ApiError(400, "top_p must be above 0", param="top_p")
    adapter = body.get("adapter", "auto")
    if not isinstance(adapter, str):
        raise ApiError(400, "adapter must be a string: auto, none, or an adapter of the model", param="adapter")
    changes["adapter"] = adapter
    # an extra field, like adapter; the model checks its limit
    max_crops = _number(body, "max_crops", 1, 1024, whole=True)
    if max_crops is not None:
        changes["max_crops"] = max_crops
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(stop, list) or len(stop) > MAX_STOP_SEQUENCES or not all(isinstance(s, str) and s for s in stop):
        raise ApiError(400, f"stop must be a string or a list of up to {MAX_STOP_SEQUENCES} non-empty strings",
                       param="stop")
    if any(len(s) > MAX_STOP_CHARS for s in stop):
        raise ApiError(400, f"a stop sequence may have at most {MAX_STOP_CHARS} characters", param="stop")
    stream_options = body.get("stream_options") or {}
    if not isinstance(stream_options, dict):
        raise ApiError(400, "stream_options must be an object", param="stream_options")
    try:
        request.options = defaults.but(**changes)
    except Phi4MMError as error:  # as generate's own refusal of the options would be answered
        raise ApiError(400, str(error)) from None
    request.stop = stop
    request.stream = _flag(body, "stream")
    request.include_usage = _flag(stream_options, "include_usage", "stream_options.include_usage")
    return request


def _flag(body: dict, name: str, param: str | None = None) -> bool:
    """A true/false field; anything else (the string "false" was once taken as true) is a 400."""
    value = body.get(name, False)
    if not isinstance(value, bool) and value is not None:
        raise ApiError(400, f"{param or name} must be true or false, not {value!r}", param=param or name)
    return bool(value)


class StopMatcher:
    """Cuts streamed text at the first stop sequence, holding back what could still begin one.
    Linear in the text: per stop sequence, the length of its longest prefix that ends the text so
    far (the Knuth-Morris-Pratt automaton), updated one character at a time. (The quadratic
    search it replaces held the event loop 18 s for one 1 MB stop string; they are also capped,
    MAX_STOP_CHARS.)"""

    def __init__(self, stops: list[str]):
        self.stops, self.pending, self.stopped = stops, "", False
        self.matched = [0] * len(stops)  # per stop: how many of its first characters end the text
        self.fallback = [_prefix_function(stop) for stop in stops]

    def feed(self, piece: str) -> str:
        """The text that is safe to send now ('' while a stop sequence may be forming). The answer
        ends at the first character that completes a stop sequence, cut before the longest one
        completed there: the same wherever the stream's pieces happen to split."""
        for position, character in enumerate(piece):
            completed = 0
            for index, stop in enumerate(self.stops):
                matched = self.matched[index]
                while matched and stop[matched] != character:
                    matched = self.fallback[index][matched - 1]
                matched += stop[matched] == character
                if matched == len(stop):
                    completed, matched = max(completed, matched), self.fallback[index][matched - 1]
                self.matched[index] = matched
            if completed:
                self.stopped = True
                out = (self.pending + piece[:position + 1])[:-completed]
                self.pending = ""
                return out
        self.pending += piece
        hold = max(self.matched, default=0)
        out = self.pending[:len(self.pending) - hold]
        self.pending = self.pending[len(out):]
        return out

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


def _prefix_function(stop: str) -> list[int]:
    """For each prefix of `stop`, the length of its longest proper prefix that is also its suffix."""
    table, length = [0] * len(stop), 0
    for i in range(1, len(stop)):
        while length and stop[i] != stop[length]:
            length = table[length - 1]
        length += stop[i] == stop[length]
        table[i] = length
    return table


def decode_media(request: ChatRequest, max_record_seconds: float) -> tuple[list, list]:
    """Images and clips decoded (off the event loop): ApiError 400 for what cannot be, 413 for a
    clip over the time limit."""
    images, audios = [], []
    for number, data in enumerate(request.images, 1):
        try:
            images.append(load_image(data))
        except ImagesBusy as error:  # other large images hold the decoded-pixel budget: a retry will do
            raise ApiError(503, f"image {number}: {error}", param="messages", code="images_busy",
                           headers={"Retry-After": "30"}) from None
        except Phi4MMError as error:
            raise ApiError(400, f"image {number}: {error}", param="messages") from None
    for number, data in enumerate(request.audios, 1):
        try:
            audios.append((load_audio(data, max_seconds=max_record_seconds), SAMPLE_RATE))
        except AudioTooLong as error:
            raise ApiError(413,
                           f"audio {number} is {error.length()}; this server takes at most {max_record_seconds:g} s",
                           param="messages", code="request_too_large") from None
        except Phi4MMError as error:
            raise ApiError(400, f"audio {number}: {error}", param="messages") from None
    return images, audios


def completion_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex}"


def usage(result) -> dict:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": len(result.token_ids),
            "total_tokens": result.prompt_tokens + len(result.token_ids),
            "prompt_tokens_details": {"cached_tokens": result.cached_prompt_tokens}}


async def stream_chunks(response: web.StreamResponse, pieces, request: ChatRequest, meta: dict) -> None:
    """Server-sent `chat.completion.chunk` events for an answer, then `data: [DONE]`."""
    async def send(payload):
        await response.write(f"data: {json.dumps(payload, ensure_ascii=False)}\n\n".encode())

    def chunk(delta, finish_reason=None):
        return {**meta, "object": "chat.completion.chunk",
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}]}

    await send(chunk({"role": "assistant", "content": ""}))
    stop = StopMatcher(request.stop)
    try:
        async for piece in pieces:
            text = stop.feed(piece)
            if text:
                await send(chunk({"content": text}))
            if stop.stopped:
                break
    except Phi4MMError as error:
        await send({"error": {"message": str(error), "type": "invalid_request_error", "param": None, "code": None}})
        await response.write(b"data: [DONE]\n\n")
        return
    if tail := stop.flush():
        await send(chunk({"content": tail}))
    result = await pieces.stop() if stop.stopped else pieces.result  # a stop sequence: counted, not discarded
    await send(chunk({}, "stop" if stop.stopped else result.finish_reason))
    if request.include_usage:
        await send({**meta, "object": "chat.completion.chunk", "choices": [], "usage": usage(result)})
    await response.write(b"data: [DONE]\n\n")


def response_meta(model_name: str, adapter: str) -> dict:
    return {"id": completion_id(), "created": int(time.time()), "model": model_name, "adapter": adapter}


def models_payload(model_name: str) -> dict:
    return {"object": "list", "data": [{"id": model_name, "object": "model", "created": 0, "owned_by": "phi4mm-edge"}]}


async def read_json(request: web.Request, limit: int, seconds: float):
    """The request's JSON body, its size bounded while it is read, within `seconds` (else 408)."""
    if request.content_length is not None and request.content_length > limit:
        raise ApiError(413, f"the request is larger than {limit / 1e6:.3g} MB, this server's limit",
                       code="request_too_large")
    chunks, size = [], 0
    try:
        async with asyncio.timeout(seconds):
            while chunk := await request.content.read(1 << 16):
                size += len(chunk)
                if size > limit:
                    raise ApiError(413, f"the request is larger than {limit / 1e6:.3g} MB, this server's limit",
                                   code="request_too_large")
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(408, f"the request's body did not arrive within {seconds:g} s: send it again",
                       code="request_timeout") from None
    try:
        return json.loads(b"".join(chunks))
    except (ValueError, UnicodeDecodeError) as error:
        raise ApiError(400, f"the body is not valid JSON ({error})") from None
    except RecursionError:
        raise ApiError(400, "the body nests its JSON too deeply (thousands of levels): send a plain request") from None


class AsyncPieces:
    """A Generation's pieces as an async iterator, each `next` run on the model thread."""

    def __init__(self, generation, on_model):
        self.generation, self.on_model = generation, on_model

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        piece = await self.on_model(next, self.generation, None)
        if piece is None:
            raise StopAsyncIteration
        return piece

    @property
    def result(self):
        return self.generation.result

    async def stop(self):
        """End the answer where a stop sequence was found; its GenerationResult (for the usage)."""
        return await self.on_model(self.generation.stop)


async def collect(pieces: AsyncPieces, stops: list[str]) -> tuple[str, bool]:
    """The whole answer (cut at a stop sequence) and whether a stop sequence ended it."""
    matcher, parts = StopMatcher(stops), []
    async for piece in pieces:
        parts.append(matcher.feed(piece))
        if matcher.stopped:
            return "".join(parts), True
    return "".join(parts) + matcher.flush(), False


def retry_after_seconds(queue_length: int) -> str:
    """Seconds a client should wait before retrying a full queue: a rough answer's time each."""
    return str(max(1, 2 * queue_length))


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(models_payload(request.app[SETTINGS].model_name))


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """POST /v1/chat/completions: one answer, whole or streamed as chat.completion.chunk events."""
    app, settings = request.app, request.app[SETTINGS]
    body = await read_json(request, settings.max_body_bytes, settings.body_seconds)
    chat = parse_request(body, settings, settings.options)
    loop, run_on_model = asyncio.get_running_loop(), on_model(app)
    try:
        async with app[REQUESTS].place() as place:
            images, audios = await loop.run_in_executor(None, decode_media, chat, settings.max_record_seconds)
            await place.turn()
            try:
                generation = await run_on_model(app[MODEL].generate, chat.messages, images=images, audios=audios,
                                                options=chat.options)
            except Phi4MMError as error:  # the prompt does not fit, an unknown adapter, ...
                raise ApiError(400, str(error)) from None
            pieces = AsyncPieces(generation, run_on_model)
            try:
                return await _respond(request, chat, pieces, settings.model_name)
            finally:
                await run_on_model(generation.close)  # a client that left mid-answer frees the model
    except QueueFull as full:
        raise ApiError(503, f"the server is busy ({full.length} requests in line): retry shortly", code="queue_full",
                       headers={"Retry-After": retry_after_seconds(full.length)}) from None


async def _respond(request, chat: ChatRequest, pieces: AsyncPieces, model_name: str) -> web.StreamResponse:
    if chat.stream:
        # The first piece comes before the response starts, so the adapter is known for every chunk.
        first = await _first_piece(pieces)
        meta = response_meta(model_name, pieces.generation.adapter)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                               "Cache-Control": "no-cache"})
        await response.prepare(request)
        try:
            await stream_chunks(response, _prepend(first, pieces), chat, meta)
            await response.write_eof()
        except ConnectionResetError:
            pass
        return response
    try:
        text, stopped = await collect(pieces, chat.stop)
    except Phi4MMError as error:
        raise ApiError(400, str(error)) from None
    result = await pieces.stop() if stopped else pieces.result
    meta = response_meta(model_name, result.adapter)
    return web.json_response({
        **meta, "object": "chat.completion",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop" if stopped else result.finish_reason}],
        "usage": usage(result),
    })


async def _first_piece(pieces: AsyncPieces) -> str | None:
    try:
        return await pieces.__anext__()
    except StopAsyncIteration:
        return None
    except Phi4MMError as error:
        raise ApiError(400, str(error)) from None


class _prepend:
    """`first`, then the rest of `pieces` (an async iterator that keeps `.result`)."""

    def __init__(self, first, pieces: AsyncPieces):
        self.first, self.pieces = first, pieces

    def __aiter__(self):
        return self

    async def __anext__(self) -> str:
        if self.first is not None:
            first, self.first = self.first, None
            return first
        return await self.pieces.__anext__()

    @property
    def result(self):
        return self.pieces.result

    async def stop(self):
        return await self.pieces.stop()
