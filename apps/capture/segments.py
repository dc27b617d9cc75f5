"""Speech segments in a stream of 16 kHz mono audio: an energy gate, numpy only.

Each 20 ms frame's RMS level (dBFS) is compared with an adaptive noise floor: a frame this
much louder than the floor is speech. A segment starts at the first speech frame and ends
once the speech has paused for longer than the hangover; segments shorter than the minimum
are dropped (clicks, coughs) and longer ones are cut at the maximum, so a segment is always
one chunk for the speech encoder.

    gate = SpeechGate()
    for block in blocks:                  # any block sizes
        for segment in gate.feed(block):  # finished segments, in order
            ...
    remaining = gate.flush()              # at the end of the audio
"""

from dataclasses import dataclass

import numpy as np

from ...runtime.audio import SAMPLE_RATE

FRAME_SAMPLES = 320  # 20 ms: short enough to place boundaries finely, long enough for a stable RMS
SILENCE_DB = -100.0  # the level of digital silence (log of zero is clamped here)
SPEECH_ABOVE_FLOOR_DB = 12.0  # speech is clearly louder than the room; 12 dB is 4x the noise RMS
FLOOR_FALL = 0.1  # per frame, the floor moves 10% of the way down to a quieter frame: one dropout barely moves it
FLOOR_RISE_DB_PER_S = 1.0  # and rises slowly, so a lasting louder background stops counting as speech
HANGOVER_SECONDS = 0.5  # pauses between words are shorter: a segment ends after a longer one
MIN_SEGMENT_SECONDS = 0.25  # shorter bursts are clicks, not words
# The speech encoder takes 500 audio tokens (40 s) in one chunk and encodes longer audio in
# independent chunks; 30 s keeps every segment one chunk with a margin.
MAX_SEGMENT_SECONDS = 30.0
PAD_SECONDS = 0.15  # audio kept before and after the speech, so soft onsets and endings are heard


@dataclass
class Segment:
    start: int  # first sample of the speech, counted from the start of the stream
    end: int  # one past its last sample
    samples: np.ndarray  # the audio from start - pad to end + pad (clamped to the stream)
    sample_rate: int = SAMPLE_RATE

    @property
    def start_seconds(self) -> float:
        return self.start / self.sample_rate

    @property
    def end_seconds(self) -> float:
        return self.end / self.sample_rate


def frame_levels(samples: np.ndarray, frame: int = FRAME_SAMPLES) -> np.ndarray:
    """RMS level in dBFS of each whole `frame`-sample frame of float samples in [-1, 1]."""
    count = len(samples) // frame
    frames = np.asarray(samples[: count * frame], np.float64).reshape(count, frame)
    power = np.mean(frames**2, axis=1)
    return np.maximum(10.0 * np.log10(np.maximum(power, 1e-30)), SILENCE_DB)


def next_floor(floor: float, level: float, frame_seconds: float) -> float:
    """The noise floor after a frame at `level`: falls quickly towards quieter frames, rises slowly."""
    if level < floor:
        return floor + FLOOR_FALL * (level - floor)
    return min(level, floor + FLOOR_RISE_DB_PER_S * frame_seconds)


class SpeechGate:
    """Streaming energy gate over 16 kHz mono float audio; keeps only the audio it may still need."""

    def __init__(self, sample_rate: int = SAMPLE_RATE, max_seconds: float = MAX_SEGMENT_SECONDS):
        self.sample_rate = sample_rate
        self.frame = FRAME_SAMPLES * sample_rate // SAMPLE_RATE
        self.frame_seconds = self.frame / sample_rate
        self.hangover_frames = round(HANGOVER_SECONDS / self.frame_seconds)
        self.min_frames = round(MIN_SEGMENT_SECONDS / self.frame_seconds)
        self.max_frames = round(max_seconds / self.frame_seconds)
        self.pad = round(PAD_SECONDS * sample_rate)
        self.floor = None  # set by the first frame
        self.frames_seen = 0
        self.speech_start = None  # frame index where the open segment's speech began
        self.last_speech = None  # frame index of its latest speech frame
        self.audio = np.zeros(0, np.float32)  # samples from `audio_offset` on
        self.audio_offset = 0

    def feed(self, samples) -> list[Segment]:
        """Take the next block of samples; return the segments it finished."""
        self.audio = np.concatenate([self.audio, np.asarray(samples, np.float32).reshape(-1)])
        first = self.frames_seen * self.frame - self.audio_offset  # the first frame not yet measured
        levels = frame_levels(self.audio[first:], self.frame)
        finished = []
        for level in levels:
            finished += self._step(float(level))
        self._forget_old_audio()
        return finished

    def flush(self) -> list[Segment]:
        """End of the stream: the open segment, if any, ends at its last speech frame."""
        finished = self._close() if self.speech_start is not None else []
        self.speech_start = self.last_speech = None
        return finished

    def _step(self, level: float) -> list[Segment]:
        index = self.frames_seen
        self.frames_seen += 1
        self.floor = level if self.floor is None else self.floor
        is_speech = level > self.floor + SPEECH_ABOVE_FLOOR_DB
        self.floor = next_floor(self.floor, level, self.frame_seconds)
        if is_speech:
            self.speech_start = index if self.speech_start is None else self.speech_start
            self.last_speech = index
        if self.speech_start is None:
            return []
        paused_long = index - self.last_speech > self.hangover_frames
        # At the maximum length the segment is cut; speech that goes on starts the next one.
        if paused_long or index + 1 - self.speech_start >= self.max_frames:
            finished = self._close()
            self.speech_start = self.last_speech = None
            return finished
        return []

    def _close(self) -> list[Segment]:
        frames = self.last_speech + 1 - self.speech_start
        if frames < self.min_frames:
            return []
        start, end = self.speech_start * self.frame, (self.last_speech + 1) * self.frame
        stream_end = self.audio_offset + len(self.audio)
        clip_start, clip_end = max(start - self.pad, self.audio_offset), min(end + self.pad, stream_end)
        clip = self.audio[clip_start - self.audio_offset : clip_end - self.audio_offset].copy()
        return [Segment(start, end, clip, self.sample_rate)]

    def _forget_old_audio(self) -> None:
        # Keep the open segment (with its leading pad), or else the last pad's worth of audio.
        keep_from = self.frames_seen * self.frame - self.pad
        if self.speech_start is not None:
            keep_from = self.speech_start * self.frame - self.pad
        keep_from = max(keep_from, self.audio_offset)
        self.audio = self.audio[keep_from - self.audio_offset :]
        self.audio_offset = keep_from


def split_segments(samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> list[Segment]:
    """The speech segments of a whole recording (16 kHz mono float samples)."""
    gate = SpeechGate(sample_rate)
    return gate.feed(samples) + gate.flush()
