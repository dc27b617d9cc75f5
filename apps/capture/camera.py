"""Frames from a camera or a video file, with opencv (an optional dependency)."""

from pathlib import Path

import numpy as np

from ...errors import Phi4MMError


def import_cv2():
    """The cv2 module, or a Phi4MMError that says how to install it."""
    try:
        import cv2
    except ImportError:
        raise Phi4MMError('the camera needs opencv: pip install -e ".[camera]" in the phi4mm-edge folder '
                          '(opencv-python-headless)') from None
    return cv2


def open_video(source="0"):
    """An opened cv2.VideoCapture for a camera index ("0", "1", ...) or a video file path; release it when done."""
    cv2 = import_cv2()
    source = str(source)
    is_index = source.isdigit()
    if not is_index and not Path(source).is_file():
        raise Phi4MMError(f"{source} is neither a camera index nor a video file")
    capture = cv2.VideoCapture(int(source) if is_index else source)
    if not capture.isOpened():
        capture.release()
        what = f"camera {source}" if is_index else f"video file {source}"
        raise Phi4MMError(f"cannot open {what}: check that it exists and is not in use (list cameras "
                          f"with `ls /dev/video*`)")
    return capture


def grab_frame(source="0") -> np.ndarray:
    """An HxWx3 BGR frame from a camera index ("0", "1", ...) or a video file path."""
    capture = open_video(source)
    try:
        ok, frame = capture.read()
        if not ok or frame is None:
            raise Phi4MMError(f"no frame could be read from {source}")
        return frame
    finally:
        capture.release()
