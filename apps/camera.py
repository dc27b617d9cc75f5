"""`phi4mm-edge camera [ARTIFACT]`: describes what a camera sees, on Enter or every N seconds.

The source is a camera (--camera INDEX) or a video file (--input VIDEO). With --interval N the
frames at 0, N, 2N, ... seconds are described: wall-clock seconds for a camera, the video's own
time (frame index / fps) for a file, so a file gives the same frames on every run and is read
as fast as it decodes. Without --interval, Enter in the terminal (Space or Enter in the window)
describes the current frame, and a file plays at its own speed. A file ends the app at its end.

The window shows the view and the latest description; it needs opencv with GUI support
(opencv-python; the camera extra installs opencv-python-headless) and a display. --headless
shows none.
"""

import json
import os
import re
import sys
import threading
import time
import textwrap
from dataclasses import asdict

from ..errors import Phi4MMError
from ..runtime import GenerationOptions
from .arguments import FAST_MAX_CROPS, FAST_MAX_CROPS_WHY, add_max_crops_argument, add_model_arguments
from .capture.camera import import_cv2, open_video
from .startup import generation_options, load_model, positive_number, restore_ctrl_c

WINDOW = "phi4mm-edge camera"
DESCRIBE_KEYS = (13, 10, 32)  # Enter (CR or LF, by platform) and Space in the window
QUIT_KEYS = (27, ord("q"))  # Esc, q
FALLBACK_FPS = 30.0  # when a video file does not say its frame rate


class TerminalKeys:
    """Reads lines from stdin on a thread: each Enter asks for a description, 'q' quits."""

    def __init__(self):
        self.pressed = threading.Event()
        self.quit = threading.Event()
        self.closed = threading.Event()  # stdin ended: no key will come
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in sys.stdin:
            if line.strip().lower() in ("q", "quit"):
                self.quit.set()
                return
            self.pressed.set()
        self.closed.set()

    def take_press(self) -> bool:
        """True once per Enter."""
        if self.pressed.is_set():
            self.pressed.clear()
            return True
        return False


def open_window(cv2) -> None:
    """Create the preview window, or raise a Phi4MMError saying why it cannot be shown."""
    gui = re.search(r"GUI:\s*(\S+)", cv2.getBuildInformation())
    if gui and gui.group(1).upper() == "NONE":
        raise Phi4MMError("this opencv has no window support (opencv-python-headless): use --headless, or "
                          "pip uninstall opencv-python-headless && pip install opencv-python")
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        raise Phi4MMError("there is no display to show the window on: use --headless")
    try:
        cv2.namedWindow(WINDOW)
    except cv2.error as error:
        raise Phi4MMError(f"opencv cannot open a window ({error}): use --headless") from None


def show(cv2, frame, caption: str) -> int:
    """Draw the frame with the caption's first lines in the window; return the key pressed (-1: none)."""
    view, lines = frame.copy(), textwrap.wrap(caption, 60)[:4]
    for row, line in enumerate(lines):
        y = view.shape[0] - 12 - 22 * (len(lines) - 1 - row)
        cv2.putText(view, line, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (0, 0, 0), 3, cv2.LINE_AA)
        cv2.putText(view, line, (8, y), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (255, 255, 255), 1, cv2.LINE_AA)
    cv2.imshow(WINDOW, view)
    return cv2.waitKey(1) & 0xFF


def frames(capture, fps: float | None, paced: bool):
    """(frame index, seconds, BGR frame) until the source ends. A file (`fps` given) counts
    index / fps seconds and is paced to real time only when `paced`; a camera (`fps` None)
    counts wall-clock seconds."""
    started, index = time.monotonic(), 0
    from_file = fps is not None
    while True:
        ok, frame = capture.read()
        if not ok or frame is None:
            return
        seconds = index / fps if from_file else time.monotonic() - started
        if from_file and paced:
            time.sleep(max(0.0, started + seconds - time.monotonic()))
        yield index, seconds, frame
        index += 1


def describe(model, frame, prompt: str, options: GenerationOptions, index: int, seconds: float, as_json: bool) -> str:
    """Answer `prompt` about one frame, streamed to stdout (or one JSON line); return the text."""
    generation = model.generate(prompt, images=[frame], options=options)
    if as_json:
        text = generation.text()
        result = generation.result
        print(json.dumps({"frame": index, "seconds": round(seconds, 3), "text": text, "adapter": result.adapter,
                          "timings": asdict(result.timings)}, ensure_ascii=False), flush=True)
        return text
    print(f"[{seconds:7.2f} s, frame {index}]", end="", flush=True)
    for piece in generation:
        print(piece, end="", flush=True)
    print(f"\n    {generation.result.summary()}", flush=True)
    return generation.result.text


def add_arguments(parser) -> None:
    add_model_arguments(parser, max_new_tokens=64)
    add_max_crops_argument(parser, FAST_MAX_CROPS, FAST_MAX_CROPS_WHY)
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--camera", default="0", metavar="INDEX", help="camera index (default 0)")
    source.add_argument("--input", metavar="VIDEO", help="read a video file instead of a camera")
    parser.add_argument("--interval", type=float, metavar="SECONDS",
                        help="describe every SECONDS (video time for --input) instead of on Enter")
    parser.add_argument("--headless", action="store_true", help="no window; Enter in the terminal describes")
    parser.add_argument("--prompt", default="Describe what you see.")
    parser.add_argument("--count", type=int, metavar="N", help="stop after N descriptions")
    parser.add_argument("--json", action="store_true", help="one JSON object per description instead of text")


def main(args) -> None:
    restore_ctrl_c()
    if args.interval is not None:
        positive_number(args.interval, "--interval")
    cv2 = import_cv2()
    if not args.headless:
        open_window(cv2)
    capture = open_video(args.input or args.camera)
    fps = (capture.get(cv2.CAP_PROP_FPS) or FALLBACK_FPS) if args.input else None
    status = sys.stderr if args.json else sys.stdout  # --json keeps stdout to the JSON lines
    model = load_model(args, status)
    options = generation_options(args)
    keys = TerminalKeys()
    how = (f"every {args.interval:g} s" if args.interval
           else "on Enter" + ("" if args.headless else " or Space in the window"))
    print(f"describing {args.input or f'camera {args.camera}'} {how}; q + Enter quits", file=status, flush=True)
    next_due, described, caption = 0.0, 0, ""
    try:
        for index, seconds, frame in frames(capture, fps, paced=args.interval is None):
            key = -1 if args.headless else show(cv2, frame, caption)
            if keys.quit.is_set() or key in QUIT_KEYS:
                break
            asked = keys.take_press() or key in DESCRIBE_KEYS
            if not asked and args.interval is None and args.headless and keys.closed.is_set():
                break  # stdin ended: nothing can ask for a description any more
            # 1 us of slack: index / fps lands on a multiple of the interval up to float rounding
            due = args.interval is not None and seconds >= next_due - 1e-6
            if asked or due:
                caption = describe(model, frame, args.prompt, options, index, seconds, args.json)
                described += 1
                if due:  # the next multiple of the interval after this frame (a slow answer skips some)
                    next_due = args.interval * (int(seconds / args.interval + 1e-6) + 1)
                if args.count and described >= args.count:
                    break
    except KeyboardInterrupt:
        print("\n[stopped]", file=status)
    finally:
        capture.release()
        if not args.headless:
            cv2.destroyAllWindows()
