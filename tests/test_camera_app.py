"""camera: describes the frames at the interval's multiples of the video's own time, each with
the vision adapter and exactly the model's words for that frame; Enter describes in headless
mode; a window without GUI support is a clear error."""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from phi4mm_edge.cli import main
from phi4mm_edge.runtime import Phi4MMEdge

FPS, FRAMES = 4, 14  # 3.5 s; the last frame is at 3.25 s
PROMPT = "Describe what you see."
STEPS = 5


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    """An MJPG video whose every frame differs (brightness, a moving square, its number)."""
    path = tmp_path_factory.mktemp("camera") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), FPS, (320, 240))
    for k in range(FRAMES):
        frame = np.full((240, 320, 3), 15 * k, np.uint8)
        cv2.rectangle(frame, (10 + 15 * k, 40), (110 + 15 * k, 140), (0, 180, 255), -1)
        cv2.putText(frame, str(k), (200, 200), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 4)
        writer.write(frame)
    writer.release()
    return path


def decoded_frames(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            return frames
        frames.append(frame)


def camera(artifact, *options, text=None):
    """Run `phi4mm-edge camera`; `text` is typed on its stdin (default: stdin is closed)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    stdin = {"input": text} if text is not None else {"stdin": subprocess.DEVNULL}
    return subprocess.run([sys.executable, "-m", "phi4mm_edge.cli", "camera", str(artifact), *map(str, options)],
                          capture_output=True, text=True, env=env, timeout=300, check=True, **stdin)


def test_interval_describes_the_frames_at_video_time(artifacts, video):
    out = camera(artifacts["int4"], "--headless", "--input", video, "--interval", 0.75, "--json",
                 "--max-new-tokens", STEPS).stdout
    described = [json.loads(line) for line in out.splitlines()]  # --json: stdout holds only the descriptions
    # 0, 0.75, 1.5, 2.25, 3.0 s: floor(3.25 / 0.75) + 1 = 5 descriptions, at the first frame at or after each.
    assert [d["frame"] for d in described] == [0, 3, 6, 9, 12]
    assert [d["seconds"] for d in described] == [0.0, 0.75, 1.5, 2.25, 3.0]
    assert {d["adapter"] for d in described} == {"vision"}
    model = Phi4MMEdge.load(artifacts["int4"])
    frames = decoded_frames(video)
    assert len(frames) == FRAMES
    for d in described:
        assert d["text"] == model.generate(PROMPT, images=[frames[d["frame"]]], max_new_tokens=STEPS).text()
    # The comparison can tell frames apart: a neighbouring frame gets other words.
    assert described[1]["text"] != model.generate(PROMPT, images=[frames[4]], max_new_tokens=STEPS).text()

    counted = camera(artifacts["int4"], "--headless", "--input", video, "--interval", 0.5, "--count", 2,
                     "--prompt", "What changed?", "--json", "--max-new-tokens", STEPS).stdout
    described = [json.loads(line) for line in counted.splitlines()]
    assert [d["frame"] for d in described] == [0, 2]  # --count stops after two
    assert described[0]["text"] == model.generate("What changed?", images=[frames[0]], max_new_tokens=STEPS).text()


def test_enter_describes_in_headless_mode(artifacts, video):
    quiet = camera(artifacts["int4"], "--headless", "--input", video, "--max-new-tokens", STEPS)
    assert "adapter:" not in quiet.stdout  # stdin ended at once: no Enter can come, nothing described
    pressed = camera(artifacts["int4"], "--headless", "--input", video, "--max-new-tokens", STEPS, text="\n")
    # One Enter, then stdin ends: one description of the frame playing then, and the app leaves.
    assert pressed.stdout.count("adapter: vision") == 1 and "frame " in pressed.stdout


def test_window_without_gui_support_and_bad_sources_are_clear_errors(artifacts, video, tmp_path, capsys):
    # The camera extra installs opencv-python-headless, which has no windows: the window mode must say so.
    assert main(["camera", str(artifacts["int4"]), "--input", str(video)]) == 2
    error = capsys.readouterr().err
    assert "no window support" in error and "--headless" in error and "pip install opencv-python" in error
    assert main(["camera", str(artifacts["int4"]), "--headless", "--input", str(tmp_path / "none.avi")]) == 2
    assert "neither a camera index nor a video file" in capsys.readouterr().err
    assert main(["camera", str(artifacts["int4"]), "--headless", "--input", str(video), "--interval", "0"]) == 2
    assert "--interval 0.0 is not a positive number" in capsys.readouterr().err
