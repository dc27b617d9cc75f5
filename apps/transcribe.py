"""`phi4mm-edge transcribe [ARTIFACT]`: live transcription (or translation) of the microphone,
or of a recording with --input.

An energy gate (apps/capture/segments.py) cuts the audio into speech segments; each segment is
transcribed on its own with the speech adapter, printed with its start and end time, and
appended to --output as one line. Ctrl-C (or --duration) stops listening; the speech in
progress is still transcribed (a second Ctrl-C stops at once).
"""

import contextlib

from ..artifact import SPEECH_ADAPTER
from ..errors import Phi4MMError
from ..runtime.audio import SAMPLE_RATE, load_audio
from .arguments import add_model_arguments
from .capture.microphone import check_microphone, listen
from .capture.segments import SpeechGate, split_segments
from .startup import generation_options, load_model, restore_ctrl_c

# Phi-4-multimodal's own task prompts for speech recognition and speech translation.
TRANSCRIBE_PROMPT = "<|audio_1|>Transcribe the audio clip into text."
TRANSLATE_PROMPT = "<|audio_1|>Translate the audio to {language}."
MAX_INPUT_SECONDS = 4 * 3600  # --input decodes the whole file: 16 kHz float32 is 230 MB per hour


def task_prompt(translate_to: str | None = None) -> str:
    """The prompt for each segment: transcription, or translation into `translate_to`."""
    return TRANSLATE_PROMPT.format(language=translate_to) if translate_to else TRANSCRIBE_PROMPT


def timestamp(seconds: float) -> str:
    """01:02:03.45"""
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours:02d}:{minutes:02d}:{seconds:05.2f}"


def transcript_line(segment, text: str) -> str:
    """One line per segment, whatever the model's line breaks: '[start --> end] text'."""
    return f"[{timestamp(segment.start_seconds)} --> {timestamp(segment.end_seconds)}] {' '.join(text.split())}"


def recording_segments(path) -> list:
    """The speech segments of an audio file."""
    return split_segments(load_audio(path, max_seconds=MAX_INPUT_SECONDS))


def live_segments(duration: float | None = None):
    """Speech segments from the default microphone as they end, for `duration` seconds of audio
    (default: until Ctrl-C); the segment in progress at the end is flushed."""
    gate, heard, limit = SpeechGate(), 0, None if duration is None else round(duration * SAMPLE_RATE)
    try:
        with contextlib.closing(listen()) as blocks:  # closing it closes the device
            for block in blocks:
                if limit is not None:
                    block = block[: limit - heard]
                heard += len(block)
                yield from gate.feed(block)
                if limit is not None and heard >= limit:
                    break
    except KeyboardInterrupt:
        print("\n[stopped listening]", flush=True)
    yield from gate.flush()


def add_arguments(parser) -> None:
    add_model_arguments(parser, max_new_tokens=128)
    parser.add_argument("--input", metavar="FILE", help="transcribe a recording instead of the microphone")
    parser.add_argument("--translate", metavar="LANGUAGE", help="translate into LANGUAGE instead of transcribing")
    parser.add_argument("--output", default="transcript.txt", metavar="FILE",
                        help="each segment is appended here (default transcript.txt)")
    parser.add_argument("--duration", type=float, metavar="SECONDS",
                        help="stop listening after SECONDS (default: at Ctrl-C)")


def main(args) -> None:
    restore_ctrl_c()  # Ctrl-C flushes, even if started with SIGINT ignored
    if args.duration is not None and (args.duration <= 0 or args.input):
        raise Phi4MMError("--duration is a positive number of seconds of microphone audio (not used with --input)")
    if not args.input:
        check_microphone()  # a missing sounddevice or device is said before the model loads
    model = load_model(args)
    prompt, options = task_prompt(args.translate), generation_options(args).but(adapter=SPEECH_ADAPTER)
    try:
        output = open(args.output, "a", encoding="utf-8")
    except OSError as error:
        raise Phi4MMError(f"cannot write the transcript to {args.output} ({error.strerror}): "
                          f"pick another --output") from None
    task = f"translating to {args.translate}" if args.translate else "transcribing"
    print(f"{task} {args.input or 'the microphone'}; appending to {args.output} (Ctrl-C stops)", flush=True)
    count = 0
    with output:
        try:
            for segment in recording_segments(args.input) if args.input else live_segments(args.duration):
                generation = model.generate(prompt, audios=[(segment.samples, segment.sample_rate)], options=options)
                line = transcript_line(segment, generation.text())
                print(line, flush=True)
                output.write(line + "\n")
                output.flush()
                count += 1
        except KeyboardInterrupt:
            print("\n[stopped]")
    print(f"{count} segment(s) appended to {args.output}")
