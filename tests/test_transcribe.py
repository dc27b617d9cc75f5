"""transcribe: the energy gate finds the speech in a recording or a live stream, each segment is
one transcript line answered by the speech adapter, and --translate asks for a translation."""

import re
import sys
import threading
import time
import types

import numpy as np
import soundfile
import soxr

from phi4mm_edge.apps import transcribe as transcribe_app
from phi4mm_edge.runtime import Phi4MMEdge
from phi4mm_edge.runtime.audio import token_count, frame_count
from phi4mm_edge.apps.capture.segments import (FRAME_SAMPLES, MAX_SEGMENT_SECONDS, PAD_SECONDS, SpeechGate,
                                               split_segments)
from test_runtime import phi4mm_edge
from test_speech import espeak

RATE = 16000
COMPRESSION_RATE = 8  # Phi-4-multimodal's feature frames per audio token (the reference artifact's too)
FRAME_S = FRAME_SAMPLES / RATE  # boundaries are whole 20 ms frames
# espeak's consonants fade in and out over a few tens of ms below the gate's threshold, and the
# gate decides per 20 ms frame: a boundary within 0.2 s (a short syllable) is where the speech is.
SPEECH_TOLERANCE_S = 0.2
LINE = re.compile(r"^\[(\d\d):(\d\d):(\d\d\.\d\d) --> (\d\d):(\d\d):(\d\d\.\d\d)\] (.*)$")


def noise(seconds, level=1e-3, seed=0):
    """A quiet room: white noise at `level` RMS (-60 dBFS)."""
    return (np.random.default_rng(seed).normal(0, level, round(seconds * RATE))).astype(np.float32)


def tone(seconds, amplitude=0.3, hz=440.0):
    return (amplitude * np.sin(2 * np.pi * hz * np.arange(round(seconds * RATE)) / RATE)).astype(np.float32)


def spoken(text, path):
    """espeak's clip at 16 kHz, trimmed to where it speaks (|x| > 0.01; espeak adds silence)."""
    samples, rate = soundfile.read(espeak(text, path), dtype="float32")
    samples = soxr.resample(samples, rate, RATE)
    loud = np.flatnonzero(np.abs(samples) > 0.01)
    return samples[loud[0] : loud[-1] + 1]


def two_utterances(tmp_path):
    """1 s of room, an utterance, 1.5 s of room, another, 1 s of room: (samples, [(start, end) s, ...])."""
    first = spoken("The weather is nice today.", tmp_path / "one.wav")
    second = spoken("Please call me tomorrow morning.", tmp_path / "two.wav")
    parts, known, at = [], [], 0.0
    for piece in (np.zeros(RATE), first, np.zeros(RATE * 3 // 2), second, np.zeros(RATE)):
        if piece is first or piece is second:
            known.append((at, at + len(piece) / RATE))
        parts.append(piece)
        at += len(piece) / RATE
    samples = np.concatenate(parts).astype(np.float32)
    return samples + noise(len(samples) / RATE), known


def parse(line):
    match = LINE.match(line)
    assert match, line
    h1, m1, s1, h2, m2, s2, text = match.groups()
    return int(h1) * 3600 + int(m1) * 60 + float(s1), int(h2) * 3600 + int(m2) * 60 + float(s2), text


# -- the segmenter ----------------------------------------------------------------------------
def test_silence_noise_and_clicks_are_not_speech():
    assert split_segments(np.zeros(3 * RATE, np.float32)) == []
    assert split_segments(noise(3)) == []
    clicked = noise(3)
    clicked[RATE : RATE + 80] += 0.5  # a 5 ms click: louder than speech, shorter than any word
    assert split_segments(clicked) == []


def test_tone_burst_boundaries_and_padding():
    samples = noise(4)
    samples[RATE : RATE + round(1.2 * RATE)] += tone(1.2)
    [segment] = split_segments(samples)
    # A tone starts and stops within one sample, so the boundary is the frame that holds it.
    assert abs(segment.start_seconds - 1.0) <= FRAME_S and abs(segment.end_seconds - 2.2) <= FRAME_S
    assert len(segment.samples) == segment.end - segment.start + 2 * round(PAD_SECONDS * RATE)


def test_streaming_in_any_blocks_equals_the_whole_recording(tmp_path):
    samples, _ = two_utterances(tmp_path)
    whole = split_segments(samples)
    gate, streamed = SpeechGate(), []
    for start in range(0, len(samples), 1237):  # blocks that split frames
        streamed += gate.feed(samples[start : start + 1237])
    streamed += gate.flush()
    assert [(s.start, s.end) for s in streamed] == [(s.start, s.end) for s in whole]
    assert all(np.array_equal(a.samples, b.samples) for a, b in zip(streamed, whole))
    assert len(gate.audio) < RATE  # the gate keeps only what a segment may still need


def test_long_speech_is_cut_at_the_maximum_length():
    syllable = np.concatenate([tone(0.2, hz=300), np.zeros(round(0.1 * RATE), np.float32)])
    samples = np.concatenate([noise(1), np.tile(syllable, 230) + noise(69, seed=1), noise(1, seed=2)])
    segments = split_segments(samples)
    lengths = [s.end_seconds - s.start_seconds for s in segments]
    assert len(segments) == 3 and max(lengths) <= MAX_SEGMENT_SECONDS
    # A cut falls within one syllable (0.3 s) of the maximum, and the next segment starts at the
    # next syllable: no speech is lost at a cut (the gaps are the 0.1 s pauses, to a frame).
    assert min(lengths[:2]) >= MAX_SEGMENT_SECONDS - 0.3
    assert all(b.start_seconds - a.end_seconds <= 0.1 + FRAME_S for a, b in zip(segments, segments[1:]))
    assert abs(segments[0].start_seconds - 1.0) <= FRAME_S and abs(segments[2].end_seconds - 69.9) <= FRAME_S
    # Every clip, pads included, is one speech-encoder chunk (500 audio tokens, 40 s).
    assert max(token_count(frame_count(len(s.samples)), COMPRESSION_RATE) for s in segments) <= 500


def test_the_noise_floor_follows_a_louder_room():
    samples = np.concatenate([noise(2), noise(14, level=1e-2, seed=1)])  # the room gets 20 dB louder at 2 s
    samples[13 * RATE : 14 * RATE] += tone(1.0)
    segments = split_segments(samples)
    # The louder room reads as speech until the floor, rising 1 dB/s, is within 12 dB of it: 8 s.
    assert len(segments) == 2 and abs(segments[0].start_seconds - 2.0) <= FRAME_S
    assert abs(segments[0].end_seconds - 10.0) <= 1.0  # per-frame noise levels wander by ~1 dB
    assert abs(segments[1].start_seconds - 13.0) <= FRAME_S and abs(segments[1].end_seconds - 14.0) <= FRAME_S


# -- the app ----------------------------------------------------------------------------------
def test_transcribe_and_translate_a_recording(artifacts, tmp_path):
    samples, known = two_utterances(tmp_path)
    recording = tmp_path / "talk.wav"
    soundfile.write(recording, samples, RATE, subtype="FLOAT")
    segments = split_segments(samples)
    assert len(segments) == 2
    for segment, (start, end) in zip(segments, known):
        assert abs(segment.start_seconds - start) <= SPEECH_TOLERANCE_S \
               and abs(segment.end_seconds - end) <= SPEECH_TOLERANCE_S

    transcript = tmp_path / "transcript.txt"
    out = phi4mm_edge("transcribe", artifacts["int4"], "--input", recording, "--output", transcript,
                      "--max-new-tokens", 6).stdout
    assert "2 segment(s) appended" in out and "RANDOM weights" not in out  # an artifact was given
    phi4mm_edge("transcribe", artifacts["int4"], "--input", recording, "--output", transcript, "--max-new-tokens", 6,
                "--translate", "French")
    lines = transcript.read_text().splitlines()
    assert len(lines) == 4  # one line per segment, and the second run appended
    model = Phi4MMEdge.load(artifacts["int4"])
    assert transcribe_app.task_prompt("French") == "<|audio_1|>Translate the audio to French."
    texts = {}
    for line, (segment, prompt) in zip(lines, [(s, transcribe_app.task_prompt()) for s in segments]
                                       + [(s, transcribe_app.task_prompt("French")) for s in segments]):
        start, end, text = parse(line)
        assert abs(start - segment.start_seconds) <= 0.005 \
               and abs(end - segment.end_seconds) <= 0.005  # printed to 10 ms
        generation = model.generate(prompt, audios=[(segment.samples, RATE)], adapter="speech", max_new_tokens=6)
        assert text == " ".join(generation.text().split())  # greedy: the app's answer is the model's, exactly
        assert generation.result.adapter == "speech"
        texts[(segment.start, prompt)] = text
    # Random weights, but greedy and deterministic: a different task prompt gives different words.
    assert all(texts[(s.start, transcribe_app.task_prompt())] != texts[(s.start, transcribe_app.task_prompt("French"))]
               for s in segments)


def test_live_microphone_through_sounddevice_callbacks(artifacts, tmp_path, monkeypatch, capsys):
    """The live path through sounddevice's callback InputStream, fed by a fake device playing a recording."""
    from phi4mm_edge.cli import main

    samples, known = two_utterances(tmp_path)
    opened = {}

    class FakeInputStream:
        def __init__(self, samplerate, channels, dtype, blocksize, callback):
            opened.update(samplerate=samplerate, channels=channels, dtype=dtype)
            self.blocksize, self.callback, self.running = blocksize, callback, False

        def start(self):
            self.running = True
            threading.Thread(target=self._play, daemon=True).start()

        def _play(self):
            position = 0
            while self.running:  # the recording, then the quiet room, for as long as it is open
                block = noise(self.blocksize / RATE, seed=position)[:, None]
                part = samples[position : position + self.blocksize]
                block[: len(part), 0] = part
                self.callback(block, self.blocksize, None, None)
                position += self.blocksize
                time.sleep(0.001)

        def stop(self):
            self.running = False

        def close(self):
            opened["closed"] = True

    monkeypatch.setitem(sys.modules, "sounddevice", types.SimpleNamespace(InputStream=FakeInputStream))
    transcript = tmp_path / "live.txt"
    # The recording ends 1 s after the second utterance; stopping 0.2 s after it leaves that one
    # open (the hangover is 0.5 s), so it is the end of listening that flushes it.
    duration = known[1][1] + 0.2
    assert main(["transcribe", str(artifacts["int4"]), "--duration", str(duration), "--output", str(transcript),
                 "--max-new-tokens", "4"]) == 0
    assert opened == {"samplerate": 16000, "channels": 1, "dtype": "float32", "closed": True}
    lines = transcript.read_text().splitlines()
    assert len(lines) == 2 and "2 segment(s) appended" in capsys.readouterr().out
    for line, (start, end) in zip(lines, known):
        heard_start, heard_end, _ = parse(line)
        assert abs(heard_start - start) <= SPEECH_TOLERANCE_S and abs(heard_end - end) <= SPEECH_TOLERANCE_S


def test_ctrl_c_while_listening_flushes_the_open_segment(monkeypatch):
    samples = np.concatenate([noise(1), tone(1.0)])  # still speaking when Ctrl-C comes

    def listen():
        for start in range(0, len(samples), 1600):
            yield samples[start : start + 1600]
        raise KeyboardInterrupt

    monkeypatch.setattr(transcribe_app, "listen", listen)
    [segment] = list(transcribe_app.live_segments())
    assert abs(segment.start_seconds - 1.0) <= FRAME_S and abs(segment.end_seconds - 2.0) <= FRAME_S


def test_bad_options_are_clear_errors(artifacts, tmp_path):
    missing = phi4mm_edge("transcribe", artifacts["int4"], "--input", tmp_path / "nope.wav",
                          "--output", tmp_path / "t.txt", check=False)
    assert missing.returncode == 2 and "audio file" in missing.stderr and "does not exist" in missing.stderr
    unwritable = phi4mm_edge("transcribe", artifacts["int4"], "--input", tmp_path / "nope.wav",
                             "--output", tmp_path / "no-such-dir" / "t.txt", check=False)
    assert unwritable.returncode == 2 and "cannot write the transcript" in unwritable.stderr


def test_a_missing_microphone_is_said_before_the_model_loads(artifacts, monkeypatch, capsys):
    """No sounddevice (or no input device): transcribe says so first, not after loading the model
    and announcing that it listens; chat's /rec likewise says it before 'recording ...'."""
    from phi4mm_edge.apps.chat import Conversation, attach
    from phi4mm_edge.cli import main

    monkeypatch.setitem(sys.modules, "sounddevice", None)  # import fails: not installed
    assert main(["transcribe", str(artifacts["int4"])]) == 2
    captured = capsys.readouterr()
    assert "recording needs sounddevice" in captured.err and "loaded" not in captured.out
    try:
        attach(Conversation(), "/rec", "2", "0")
    except Exception as error:  # noqa: BLE001  the Phi4MMError chat prints
        assert "recording needs sounddevice" in str(error)
    assert "recording 2 s" not in capsys.readouterr().out

    def no_device(**settings):
        raise RuntimeError("Error querying device -1")

    monkeypatch.setitem(sys.modules, "sounddevice",
                        types.SimpleNamespace(InputStream=None, check_input_settings=no_device))
    assert main(["transcribe", str(artifacts["int4"])]) == 2
    captured = capsys.readouterr()
    assert "cannot record from the default microphone" in captured.err and "loaded" not in captured.out
