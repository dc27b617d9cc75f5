"""`phi4mm-edge chat [ARTIFACT]`: a terminal chat with history and streamed answers.

Every turn renders the whole conversation; the model keeps the KV cache of its last request, so
a follow-up that starts with the same history (and the same adapter) prefills only what is new
(runtime/model.py, generate). The cache is matched against the prompt's own tokens, so a stopped
answer (Ctrl-C) leaves nothing to repair: what the next prompt does not share is run again.

Media (/image, /audio, /snap, /rec) attach to the next message and stay with their turn: the
history keeps every image and clip, numbered <|image_1|>, <|image_2|>, ... in the order they
were attached, so the prompt always shows the model what was actually said and a later
question may refer to an earlier picture (the model's feature cache spares encoding them again
while it holds them). The cost: their tokens stay in every later prompt, and once an image is in
the conversation every later turn runs with the vision adapter (audio alone: the speech
adapter), as the model was trained. /reset starts over.

A stopped answer stays in the history as far as it was shown; a turn that fails (an error
before the answer starts, or Ctrl-C before its first word) is dropped with its media.
"""

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import Phi4MMError
from ..runtime import GenerationOptions
from ..runtime.audio import SAMPLE_RATE, load_audio
from ..runtime.image import load_image
from .arguments import add_max_crops_argument, add_model_arguments
from .capture.camera import grab_frame
from .capture.microphone import check_microphone, record
from .startup import generation_options, load_model, restore_ctrl_c

PROMPT = "you> "
ANSWER = "phi4mm> "
HELP = """commands:
  /image PATH     attach an image to your next message
  /audio PATH     attach an audio clip (WAV, FLAC, OGG, MP3) to your next message
  /snap           attach one frame from the camera (--camera INDEX|VIDEO)
  /rec SECONDS    record from the microphone and attach the clip
  /reset          forget the conversation and its media
  /help           this list
  /quit           leave (Ctrl-D too); Ctrl-C stops an answer"""


@dataclass
class Conversation:
    messages: list = field(default_factory=list)  # {role, content}, placeholders included
    images: list = field(default_factory=list)  # every image so far, in <|image_N|> order
    audios: list = field(default_factory=list)  # every clip so far, in <|audio_N|> order
    pending_images: list = field(default_factory=list)  # attached to the next message
    pending_audios: list = field(default_factory=list)

    def next_turn(self, text: str) -> tuple[list, list, list]:
        """(messages, images, audios) with `text` and the pending media as the next user message."""
        placeholders = [f"<|image_{len(self.images) + n}|>" for n in range(1, len(self.pending_images) + 1)]
        placeholders += [f"<|audio_{len(self.audios) + n}|>" for n in range(1, len(self.pending_audios) + 1)]
        message = {"role": "user", "content": "".join(placeholders) + text}
        return self.messages + [message], self.images + self.pending_images, self.audios + self.pending_audios

    def commit(self, messages: list, answer: str) -> None:
        """Keep a finished turn: its messages, its media, the answer."""
        self.messages = messages + [{"role": "assistant", "content": answer}]
        self.images += self.pending_images
        self.audios += self.pending_audios
        self.drop_pending()

    def drop_pending(self) -> None:
        self.pending_images, self.pending_audios = [], []


def take_turn(model, conversation: Conversation, text: str, options: GenerationOptions) -> None:
    """Stream the answer to `text`; Ctrl-C stops it and keeps what was shown."""
    messages, images, audios = conversation.next_turn(text)
    shown, generation = [], None
    try:
        generation = model.generate(messages, images=images, audios=audios, options=options)
        print(ANSWER, end="", flush=True)
        for piece in generation:
            shown.append(piece)
            print(piece, end="", flush=True)
    except Phi4MMError:
        conversation.drop_pending()
        raise
    except KeyboardInterrupt:
        if generation is not None:
            generation.close()  # give the model back now, before the next turn asks for it
        print(f"\n[stopped; adapter: {model.active_adapter}]", flush=True)
        if shown:
            conversation.commit(messages, "".join(shown))
        else:
            conversation.drop_pending()
        return
    print(f"\n[{generation.result.summary()}]", flush=True)
    conversation.commit(messages, generation.result.text)


def attach(conversation: Conversation, command: str, argument: str, camera: str) -> str:
    """Run a media command; return what to tell the user."""
    if command in ("/image", "/audio") and not argument:
        raise Phi4MMError(f"usage: {command} PATH")
    if command in ("/image", "/snap"):
        image = load_image(Path(argument).expanduser()) if command == "/image" else grab_frame(camera)
        conversation.pending_images.append(image)
        return f"attached image {len(conversation.images) + len(conversation.pending_images)} to your next message"
    if command == "/audio":
        clip = (load_audio(Path(argument).expanduser()), SAMPLE_RATE)
    else:
        try:
            seconds = float(argument)
        except ValueError:
            raise Phi4MMError("usage: /rec SECONDS, e.g. /rec 5") from None
        check_microphone()  # say what is missing before announcing a recording
        print(f"recording {seconds:g} s ...", flush=True)
        clip = record(seconds)
    conversation.pending_audios.append(clip)
    return f"attached audio {len(conversation.audios) + len(conversation.pending_audios)} to your next message"


def add_arguments(parser) -> None:
    add_model_arguments(parser)
    add_max_crops_argument(parser)
    parser.add_argument("--camera", default="0", metavar="INDEX|VIDEO",
                        help="what /snap reads: a camera index or a video file (default 0)")


def main(args) -> None:
    restore_ctrl_c()  # Ctrl-C stops an answer even when started as a background job's child
    try:
        import readline  # noqa: F401  line editing and history for input(), where the platform has it
    except ImportError:
        pass
    model = load_model(args)
    options = generation_options(args)
    conversation = Conversation()
    print("type a message, or /help")
    while True:
        try:
            line = input(PROMPT).strip()
        except (EOFError, KeyboardInterrupt):  # Ctrl-D / Ctrl-C at the prompt: leave
            print()
            return
        command, _, argument = line.partition(" ")
        argument = argument.strip()
        try:
            if not line:
                continue
            elif command == "/quit":
                return
            elif command == "/help":
                print(HELP)
            elif command == "/reset":
                conversation = Conversation()
                print("conversation cleared")
            elif command in ("/image", "/audio", "/snap", "/rec"):
                print(attach(conversation, command, argument, args.camera))
            elif command.startswith("/"):
                print(f"unknown command {command}: /help lists them")
            else:
                take_turn(model, conversation, line, options)
        except Phi4MMError as error:
            print(f"error: {error}", flush=True)
        except KeyboardInterrupt:  # during /rec or /snap: cancel that, keep the session
            print("\n[cancelled]", flush=True)
