"""Bad input, as a table: each case -> the Phi4MMError message fragment a user sees. The command
line must exit 2 with `phi4mm-edge: error: ...` and no traceback; the Python API must raise
Phi4MMError. Valid but unusual media (8 kHz, 96 kHz, six channels, an animated GIF) must answer."""

import io
import math

import numpy as np
import pytest
import soundfile
from PIL import Image

from phi4mm_edge import Phi4MMError
from phi4mm_edge.cli import main
from phi4mm_edge.runtime import Phi4MMEdge


def wav(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, subtype=subtype, format="WAV")
    return buffer.getvalue()


def tone(seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    wave = (0.3 * np.sin(2 * np.pi * 220 * np.arange(int(seconds * rate)) / rate)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


def png(size=(64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, (200, 30, 90)).save(buffer, "PNG")
    return buffer.getvalue()


def animated_gif() -> bytes:
    buffer = io.BytesIO()
    frames = [Image.new("RGB", (64, 64), color) for color in ((255, 0, 0), (0, 255, 0), (0, 0, 255))]
    frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buffer.getvalue()


MEDIA = {  # file name -> bytes, written once per test
    "empty.png": lambda: b"",
    "truncated.png": lambda: png()[:60],
    "text.png": lambda: b"hello, this is text and not a picture\n" * 20,
    "animated.gif": animated_gif,
    "empty.wav": lambda: b"",
    "truncated.wav": lambda: wav(tone(1.0, 16000), 16000)[:20],
    "nan.wav": lambda: wav(np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT"),
    "8k.wav": lambda: wav(tone(1.0, 8000), 8000),
    "96k.wav": lambda: wav(tone(1.0, 96000), 96000),
    "6ch.wav": lambda: wav(tone(1.0, 16000, channels=6), 16000),
}

# argv after `run ARTIFACT --prompt hi --max-new-tokens 2` (or the whole argv for other commands) -> message
CLI_ERRORS = {
    "invalid UTF-8 in the prompt": (["--prompt", "caf\udce9"], "is not valid text"),
    "negative seed": (["--seed", "-1"], "seed -1"),
    "NaN temperature": (["--temperature", "nan"], "temperature nan"),
    "negative temperature": (["--temperature", "-0.5"], "temperature -0.5"),
    "top_p 0": (["--top-p", "0"], "top_p 0.0"),
    "NaN top_p": (["--top-p", "nan"], "top_p nan"),
    "negative top_k": (["--top-k", "-3"], "top_k -3"),
    "context 0": (["--context", "0"], "context length 0"),
    "NaN audio limit": (["--max-audio-seconds", "nan"], "max_audio_seconds nan"),
    "zero new tokens": (["--max-new-tokens", "0"], "max_new_tokens 0"),
    "threads beyond the CPUs": (["--threads", "100000"], "logical CPUs"),
    "unknown adapter": (["--adapter", "music"], "not in this artifact"),
    "0-byte image": (["--image", "empty.png"], "is empty (0 bytes)"),
    "truncated image": (["--image", "truncated.png"], "it is damaged or truncated"),
    "text as a PNG": (["--image", "text.png"], "not an image format"),
    "missing image": (["--image", "nowhere.png"], "does not exist"),
    "0-byte audio": (["--audio", "empty.wav"], "is empty (0 bytes)"),
    "truncated audio": (["--audio", "truncated.wav"], "cannot decode audio file"),
    "NaN audio": (["--audio", "nan.wav"], "NaN or infinite samples"),
}
SERVE_ERRORS = {
    "port beyond 65535": (["--port", "70000"], "--port 70000"),
    "NaN recording limit": (["--max-record-seconds", "nan"], "--max-record-seconds nan"),
    "negative photo limit": (["--max-image-mb", "-1"], "--max-image-mb -1"),
}


@pytest.fixture()
def media(tmp_path, monkeypatch):
    for name, make in MEDIA.items():
        (tmp_path / name).write_bytes(make())
    monkeypatch.chdir(tmp_path)
    return tmp_path


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])  # a traceback would escape here and fail the test
    captured = capsys.readouterr()
    return code, captured.err


@pytest.mark.parametrize("case", list(CLI_ERRORS))
def test_run_refuses_bad_input_with_a_clear_error(artifacts, media, capsys, case):
    extra, message = CLI_ERRORS[case]
    argv = ["run", artifacts["int4"], "--prompt", "hi", "--max-new-tokens", 2, *extra]
    code, err = run_cli(argv, capsys)
    assert code == 2 and err.startswith("phi4mm-edge: error: ") and message in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("case", list(SERVE_ERRORS))
def test_serve_refuses_bad_options_before_listening(artifacts, capsys, case):
    extra, message = SERVE_ERRORS[case]
    code, err = run_cli(["serve", artifacts["int4"], *extra], capsys)
    assert code == 2 and message in err, err


def test_a_file_given_as_the_artifact_folder_is_named_as_such(media, capsys):
    code, err = run_cli(["run", media / "8k.wav", "--prompt", "hi"], capsys)
    assert code == 2 and "is a file, not an artifact folder" in err


@pytest.mark.parametrize("name,adapter", [("8k.wav", "speech"), ("96k.wav", "speech"), ("6ch.wav", "speech"),
                                          ("animated.gif", "vision")])
def test_unusual_but_valid_media_are_answered(artifacts, media, capsys, name, adapter):
    import json

    option = "--image" if name.endswith(".gif") else "--audio"
    code = main(["run", str(artifacts["int4"]), "--prompt", "hi", "--max-new-tokens", "2", option, name, "--json"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["adapter"] == adapter


# -- the Python API ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model(artifacts):
    return Phi4MMEdge.load(artifacts["int4"])


API_ERRORS = {  # generate(**call) -> message
    "a None prompt": (dict(messages=None), "messages must be a string or a list"),
    "a bytes prompt": (dict(messages=b"hi"), "messages must be a string or a list"),
    "a lone surrogate": (dict(messages="hi \udcff"), "is not valid text"),
    "content None": (dict(messages=[{"role": "user", "content": None}]), "bad message"),
    "no messages": (dict(messages=[]), "there are no messages"),
    "max_new_tokens as text": (dict(messages="hi", max_new_tokens="4"), "max_new_tokens '4'"),
    "fractional max_new_tokens": (dict(messages="hi", max_new_tokens=2.5), "max_new_tokens 2.5"),
    "images as one string": (dict(messages="hi", images="ok.png"), "images must be a list"),
    "audios as one tuple element": (dict(messages="hi", audios=b"RIFF"), "audios must be a list"),
    "NaN sample rate": (dict(messages="hi", audios=[(np.zeros(16000, np.float32), math.nan)]), "sample rate nan"),
    "channels-first audio": (dict(messages="hi", audios=[(np.zeros((2, 16000), np.float32), 16000)]), "transpose"),
    "NaN top_p": (dict(messages="hi", top_p=math.nan), "top_p nan"),
    "negative top_k": (dict(messages="hi", top_k=-1), "top_k -1"),
    "an unknown adapter": (dict(messages="hi", adapter="music"), "not in this artifact"),
}


@pytest.mark.parametrize("case", list(API_ERRORS))
def test_generate_refuses_bad_arguments(model, case):
    call, message = API_ERRORS[case]
    with pytest.raises(Phi4MMError) as refused:
        model.generate(**call).text()
    assert message in str(refused.value)


def test_load_refuses_bad_options(artifacts, tmp_path):
    for options, message in ((dict(context_length=0), "context length 0"), (dict(max_audio_seconds=math.nan), "max_audio_seconds nan"),
                             (dict(threads=0), "give 1.."), (dict(prefill="fast"), "not one of")):
        with pytest.raises(Phi4MMError, match=message):
            Phi4MMEdge.load(artifacts["int4"], **options)
    with pytest.raises(Phi4MMError, match="ids must be a list of token ids"):
        Phi4MMEdge.load(artifacts["int4"]).generate_from_ids(["a", "b"])
