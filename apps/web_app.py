"""The web page's HTTP side (aiohttp): the page's files, its limits, the access rules, and
answers streamed as server-sent events, one generation at a time.

    GET  /              the page (apps/web/index.html); with ?token=... sets the access cookie
    GET  /static/NAME   the page's scripts and style
    GET  /api/config    limits and model facts the page shows
    POST /api/ask       multipart: prompt, optional image, optional audio (a recording, WAV made
                        in the page); answers text/event-stream: `queue` {ahead}, `piece` {text},
                        then `done` {adapter, ttft_ms, decode_tokens_per_s, ...} or `error` {message}

Refusals before the stream starts are JSON {"error": message}: 400 (bad request), 403 (access),
413 (a photo or recording over the limit).
"""

import asyncio
import ipaddress
import json
import logging
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import BodyPartReader, web

from ..errors import Phi4MMError
from ..runtime import GenerationOptions
from ..runtime.audio import SAMPLE_RATE, AudioTooLong, load_audio
from ..runtime.image import ImagesBusy, load_image
from .openai_api import API_PREFIX, ApiError, chat_completions, list_models
from .request_queue import QueueFull, RequestQueue
from .server_state import MODEL, MODEL_THREAD, REQUESTS, SETTINGS, ServeSettings

__all__ = ["ServeSettings", "make_app"]

log = logging.getLogger("phi4mm_edge.serve")
WEB_FOLDER = Path(__file__).with_name("web")
TOKEN_COOKIE = "phi4mm_token"
TOKEN_HEADER = "X-Access-Token"
MAX_PROMPT_BYTES = 64 * 1024  # far beyond any context; only bounds what is held in memory
READ_CHUNK = 64 * 1024
LOOPBACK_NAMES = {"localhost"}  # besides loopback IP addresses, the one name that always means this machine


@dataclass(frozen=True)
class Question:
    """The page's form, read: the prompt, the photo's and the recording's bytes (None: not sent)."""

    prompt: str
    image: bytes | None
    audio: bytes | None
    options: GenerationOptions  # serve's, with the form's max_new_tokens


class Refusal(Exception):
    """A request refused before any answer starts: an HTTP status and a message for the page."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _refusal_response(request, refusal: Refusal) -> web.Response:
    if request.path.startswith("/api/"):
        response = web.json_response({"error": refusal.message}, status=refusal.status)
    else:
        response = web.Response(status=refusal.status, text=refusal.message + "\n")
    if refusal.status == 408:  # the rest of that body may still come: the connection cannot carry another request
        response.force_close()
    return response


def is_loopback_host(host: str) -> bool:
    """True for `localhost` and loopback IP addresses (127.0.0.0/8, ::1). A name that merely starts
    with "127." (127.0.0.1.nip.io, 127.attacker.example) is a DNS name and may point anywhere."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def access_refusal(request, settings: ServeSettings) -> tuple[str, bool] | None:
    """Why this request may not use the server (and whether it is only the token), or None."""
    host = urlsplit(f"//{request.host}").hostname or ""
    origin = request.headers.get("Origin")
    # Another web site's script may send requests to this server from the user's browser: a
    # POST needs no permission to be sent. Refuse origins other than the page's own.
    if origin is not None and urlsplit(origin).netloc != request.host:
        return f"requests from {origin} are refused: only this server's own page may use it", False
    if settings.token is None:
        # Local mode: a Host other than loopback means DNS rebinding (a site's name pointed at 127.0.0.1).
        if not is_loopback_host(host):
            return f"this server answers only on localhost, not as {host!r}; use serve --lan for other devices", False
        return None
    remote = ipaddress.ip_address((request.remote or "0.0.0.0").split("%")[0])
    if not (remote.is_private or remote.is_loopback or remote.is_link_local):
        return f"{remote} is not on the local network: serve --lan answers only local addresses", False
    bearer = request.headers.get("Authorization", "")
    bearer = bearer[len("Bearer "):].strip() if bearer.startswith("Bearer ") else ""
    offered = (bearer or request.query.get("token") or request.headers.get(TOKEN_HEADER)
               or request.cookies.get(TOKEN_COOKIE) or "")
    # surrogateescape: a header byte that is not UTF-8 (aiohttp keeps it as a lone surrogate) is
    # simply a wrong token, not an error (it was a 500 before authentication).
    if not secrets.compare_digest(offered.encode("utf-8", "surrogateescape"), settings.token.encode()):
        if request.path.startswith(API_PREFIX):
            return ("missing or wrong API key: send the token `phi4mm-edge serve --lan` printed as "
                    "Authorization: Bearer TOKEN (the OpenAI client's api_key)"), True
        return ("this page needs its access token: open the full URL that `phi4mm-edge serve --lan` printed "
                "(it ends in ?token=...) or scan its QR code"), True
    return None


@web.middleware
async def guard(request, handler):
    settings = request.app[SETTINGS]
    refused = access_refusal(request, settings)
    api = request.path.startswith(API_PREFIX)
    if refused:
        reason, token_only = refused
        if api:
            return ApiError(401 if token_only else 403, reason,
                            code="invalid_api_key" if token_only else None).response()
        return _refusal_response(request, Refusal(403, reason))
    try:
        return await handler(request)
    except Refusal as refusal:
        return _refusal_response(request, refusal)
    except ApiError as error:
        return error.response()


async def page(request):
    settings = request.app[SETTINGS]
    if settings.token and request.query.get("token"):
        # Keep the token out of the address bar (and screenshots): a cookie carries it from now on.
        response = web.HTTPFound("/")
        response.set_cookie(TOKEN_COOKIE, settings.token, httponly=True, samesite="Strict", secure=settings.tls)
        raise response
    return web.FileResponse(WEB_FOLDER / "index.html", headers={"Cache-Control": "no-cache"})


async def config(request):
    settings = request.app[SETTINGS]
    return web.json_response({
        "model": settings.model_name,
        "random_weights": settings.random_weights,
        "max_image_bytes": settings.max_image_bytes,
        "max_record_seconds": settings.max_record_seconds,
        "max_new_tokens": settings.options.max_new_tokens,
    })


async def _read_part(part, limit: int, too_large: str) -> bytes:
    chunks, size = [], 0
    while chunk := await part.read_chunk(READ_CHUNK):
        size += len(chunk)
        if size > limit:
            raise Refusal(413, too_large)
        chunks.append(chunk)
    return b"".join(chunks)


def _megabytes(count: int) -> str:
    return f"{count / 1e6:.3g} MB"


@dataclass(frozen=True)
class Upload:
    """A file field of the form: what the page calls it, its byte limit, the refusal of a larger one."""

    what: str
    limit: int
    too_large: str


def _uploads(settings: ServeSettings) -> dict[str, Upload]:
    """The form's file fields by name, each read the same way: at most one, within its limit."""
    return {
        "image": Upload("photo", settings.max_image_bytes,
                        f"the photo is larger than {_megabytes(settings.max_image_bytes)}, "
                        f"this server's limit: send a smaller one (serve --max-image-mb)"),
        "audio": Upload("recording", settings.max_audio_bytes,
                        f"the recording is larger than {_megabytes(settings.max_audio_bytes)}: "
                        f"longer than the {settings.max_record_seconds:g} s this server takes"),
    }


async def read_question(request, settings: ServeSettings) -> Question:
    """The multipart form (prompt, image, audio, max_new_tokens) as a Question, read within
    settings.body_seconds (else 408). A body aiohttp cannot parse (no boundary, truncated, nested,
    oversized headers) is a 400."""
    if not request.content_type.startswith("multipart/form-data"):
        raise Refusal(400, "send the question as multipart/form-data (fields: prompt, image, audio)")
    try:
        async with asyncio.timeout(settings.body_seconds):
            return await _read_form(request, settings)
    except TimeoutError:
        raise Refusal(408, f"the question did not arrive within {settings.body_seconds:g} s: send it again") from None
    except Refusal:
        raise
    except (ConnectionError, asyncio.CancelledError):
        raise  # the client left while sending: nothing to answer
    except Exception as error:  # aiohttp raises ValueError, AssertionError, HTTP parser errors ... on bad bodies
        raise Refusal(400, f"the form could not be read ({type(error).__name__}): send multipart/form-data "
                           f"with the fields prompt, image, audio") from None


async def _read_form(request, settings: ServeSettings) -> Question:
    most, uploads = settings.options.max_new_tokens, _uploads(settings)
    prompt, files, options = "", {}, settings.options
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            raise Refusal(400, "nested multipart bodies are not taken: send one flat form")
        if part.name in uploads:
            upload = uploads[part.name]
            if part.name in files:
                raise Refusal(400, f"one {upload.what} per question")
            files[part.name] = await _read_part(part, upload.limit, upload.too_large)
        elif part.name in ("prompt", "max_new_tokens"):
            text = (await _read_part(part, MAX_PROMPT_BYTES, "the question is too long")).decode("utf-8", "replace")
            if part.name == "prompt":
                prompt = text
            elif not re.fullmatch(r"[0-9]{1,9}", text.strip()) or not 1 <= int(text) <= most:  # ASCII digits only
                raise Refusal(400, f"max_new_tokens must be a whole number in 1..{most}")
            else:
                options = settings.options.but(max_new_tokens=int(text))
        else:
            await _read_part(part, MAX_PROMPT_BYTES, f"unknown field {part.name!r}")
    question = Question(prompt, files.get("image"), files.get("audio"), options)
    if not question.prompt.strip() and question.image is None and question.audio is None:
        raise Refusal(400, "type a question, or add a photo or a recording")
    return question


def _recording(audio: bytes, settings: ServeSettings):
    """Decoded 16 kHz samples of a recording within the time limit (runs off the event loop).
    Decoding stops at the limit: a long or lying file costs no more than the limit's samples."""
    try:
        samples = load_audio(audio, max_seconds=settings.max_record_seconds)
    except AudioTooLong as error:
        raise Refusal(413, f"the recording is {error.length()}; this server takes at most "
                           f"{settings.max_record_seconds:g} s (serve --max-record-seconds)") from None
    except Phi4MMError as error:
        raise Refusal(400, f"the recording: {error}") from None
    return samples, SAMPLE_RATE


def _photo(image: bytes):
    """The decoded photo (runs off the event loop); an undecodable one is a 400 before any answer."""
    try:
        return load_image(image)
    except ImagesBusy as error:  # other large images hold the decoded-pixel budget: a retry will do
        raise Refusal(503, f"the photo: {error}") from None
    except Phi4MMError as error:
        raise Refusal(400, f"the photo: {error}") from None


async def _send(response, event: str, data: dict) -> None:
    await response.write(f"event: {event}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode())


async def ask(request):
    app, settings = request.app, request.app[SETTINGS]
    arrived = time.perf_counter()
    question = await read_question(request, settings)
    loop = asyncio.get_running_loop()
    # In line from arrival: decoding an upload happens while waiting, and cannot be overtaken.
    try:
        async with app[REQUESTS].place() as place:
            audios, images = [], []
            if question.audio is not None:
                audios.append(await loop.run_in_executor(None, _recording, question.audio, settings))
            if question.image is not None:
                images.append(await loop.run_in_executor(None, _photo, question.image))
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8",
                                                   "Cache-Control": "no-cache"})
            await response.prepare(request)
            try:
                await place.turn(lambda ahead: _send(response, "queue", {"ahead": ahead}))
                waited_ms = (time.perf_counter() - arrived) * 1000
                await _answer(app, question, images, audios, response, loop, waited_ms)
                await response.write_eof()
            except ConnectionResetError:
                pass  # the page went away: its turn ends here, the next request goes ahead
    except QueueFull as full:
        raise Refusal(503, f"the server is busy ({full.length} requests in line): try again shortly") from None
    return response


async def _answer(app, question: Question, images, audios, response, loop, waited_ms: float) -> None:
    """Stream one answer as events: pieces, then `done`, or `error` (a user error, or a failure
    of ours, which is logged)."""

    def on_model(function, *args, **kwargs):
        # Every runtime call happens on the one model thread.
        return loop.run_in_executor(app[MODEL_THREAD], lambda: function(*args, **kwargs))

    generation = None
    try:
        generation = await on_model(app[MODEL].generate, question.prompt, images=images, audios=audios,
                                    options=question.options)
        while (piece := await on_model(next, generation, None)) is not None:
            await _send(response, "piece", {"text": piece})
    except (ConnectionError, asyncio.CancelledError):
        if generation is not None:  # the page left mid-answer: stop it on the model thread, free the model
            await on_model(generation.close)
        raise
    except Phi4MMError as error:
        await _send(response, "error", {"message": str(error)})
        return
    except Exception as error:  # a failure of ours (e.g. ONNX Runtime could not allocate): say so, log it
        log.exception("generation failed")
        await _send(response, "error", {"message": f"the server failed to answer ({type(error).__name__}: {error}); "
                                                   f"its log has the details"})
        return
    result = generation.result
    await _send(response, "done", {
        "adapter": result.adapter,
        "ttft_ms": result.timings.ttft_ms,
        "decode_tokens_per_s": result.timings.decode_tokens_per_s,
        "tokens": len(result.token_ids),
        "finish_reason": result.finish_reason,
        "waited_ms": round(waited_ms, 1),
    })


def make_runner(app: web.Application) -> web.AppRunner:
    """The server around `app`: idle and slow connections closed (settings.idle_seconds), and a
    request's handler cancelled when its client leaves, so an abandoned request, waiting or
    answering, gives its place in line and the model back at once."""
    # lingering_time: how long an unread body is drained before its connection closes (aiohttp: 10 s).
    return web.AppRunner(app, access_log=None, keepalive_timeout=app[SETTINGS].idle_seconds, handler_cancellation=True,
                         lingering_time=1.0)


def make_app(model, settings: ServeSettings) -> web.Application:
    """The aiohttp application serving `model` (a loaded Phi4MMEdge) under `settings`."""
    app = web.Application(middlewares=[guard], client_max_size=settings.max_body_bytes)
    app[MODEL], app[SETTINGS], app[REQUESTS] = model, settings, RequestQueue(settings.max_queue)
    app[MODEL_THREAD] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="phi4mm-model")
    app.router.add_get("/", page)
    app.router.add_get("/api/config", config)
    app.router.add_post("/api/ask", ask)
    app.router.add_post(API_PREFIX + "chat/completions", chat_completions)
    app.router.add_get(API_PREFIX + "models", list_models)
    app.router.add_static("/static/", WEB_FOLDER)

    async def stop_model_thread(app):
        app[MODEL_THREAD].shutdown(wait=False, cancel_futures=True)

    app.on_cleanup.append(stop_model_thread)
    return app
