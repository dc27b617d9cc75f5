"""What serve's page and its OpenAI-compatible API share: the settings, the loaded model, the
request queue and the one thread the model runs on."""

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from aiohttp import web

from ..runtime import GenerationOptions
from .request_queue import RequestQueue

# A recording's bytes are bounded before it is decoded: float32 stereo at 48 kHz is the
# largest ordinary PCM a browser or phone sends, so any clip within the time limit fits.
LARGEST_PCM_BYTES_PER_SECOND = 48000 * 2 * 4


@dataclass(frozen=True)
class ServeSettings:
    max_image_bytes: int
    max_record_seconds: float
    options: GenerationOptions  # serve's command line, every answer's; its max_new_tokens is the most a request may ask
    token: str | None = None   # set in --lan mode: every request must carry it
    tls: bool = False
    model_name: str = ""
    random_weights: bool = False  # the bundled reference model: the page says it knows only its training tasks
    max_queue: int = 8  # requests waiting or answering at once; more get 503 (the API) / 503 (the page)
    # A connection that has not sent a whole request's headers this long after it opened (or after
    # its last answer) is closed: idle or slow ("slowloris") connections once held the server until
    # it accepted no more. Browsers reopen kept-alive connections as needed.
    idle_seconds: float = 15.0
    body_seconds: float = 120.0  # a request's body must arrive within this (10 MB at 1 Mbit/s: 80 s), else 408

    @property
    def max_audio_bytes(self) -> int:
        return int(self.max_record_seconds * LARGEST_PCM_BYTES_PER_SECOND) + 64 * 1024

    @property
    def max_body_bytes(self) -> int:
        """An API request's largest JSON body: a photo and a recording in base64, and text."""
        return (self.max_image_bytes + self.max_audio_bytes) * 4 // 3 + 1_000_000


SETTINGS = web.AppKey("settings", ServeSettings)
MODEL = web.AppKey("model", object)
REQUESTS = web.AppKey("requests", RequestQueue)
MODEL_THREAD = web.AppKey("model_thread", ThreadPoolExecutor)


def on_model(app: web.Application):
    """A function that runs `function(*args)` on the model's one thread and awaits it."""
    loop = asyncio.get_running_loop()

    def run(function, *args, **kwargs):
        return loop.run_in_executor(app[MODEL_THREAD], lambda: function(*args, **kwargs))

    return run
