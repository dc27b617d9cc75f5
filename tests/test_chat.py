"""chat, driven through a pseudo-terminal like a person: turns with text, audio and an image
each answered by the right adapter with exactly the model's words, Ctrl-C stopping an answer
without breaking the session, /reset, /quit."""

import os
import re
import sys

import cv2
import numpy as np
import pexpect
from PIL import Image

from phi4mm_edge.runtime import Phi4MMEdge
from test_speech import espeak

STATS = re.compile(r"\r\n\[adapter: (\w+), ttft [\d.]+ ms, [\d.\-]+ tokens/s, (\d+) tokens\]\r\n")
STOPPED = re.compile(r"\r\n\[stopped; adapter: (\w+)\]\r\n")
TIMEOUT = 60  # seconds per expected line; a turn of the tiny model takes well under one


def start_chat(artifact, *options):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TERM": "dumb"}  # dumb: readline draws no escape sequences
    child = pexpect.spawn(sys.executable, ["-m", "phi4mm_edge.cli", "chat", str(artifact), *map(str, options)],
                          env=env, encoding="utf-8", timeout=TIMEOUT, dimensions=(50, 1000))
    child.expect_exact("you> ")
    return child


def say(child, line):
    """Send one line; return (streamed answer text, adapter, generated tokens)."""
    child.sendline(line)
    child.expect_exact("phi4mm> ")
    child.expect(STATS)
    adapter, tokens = child.match.group(1), int(child.match.group(2))
    text = child.before
    child.expect_exact("you> ")
    return text, adapter, tokens


def command(child, line):
    """Send a /command; return what it printed."""
    child.sendline(line)
    child.expect_exact("you> ")
    return child.before


def test_chat_turns_with_media_reset_and_quit(artifacts, tmp_path):
    picture = tmp_path / "square.png"
    image = np.full((240, 320, 3), 230, np.uint8)
    image[60:180, 100:220] = (200, 30, 30)
    Image.fromarray(image).save(picture)
    clip = espeak("What colour is the square?", tmp_path / "question.wav")
    video = tmp_path / "camera.avi"  # /snap reads --camera: a video file stands in for the camera
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 5, (320, 240))
    writer.write(image[:, :, ::-1].copy())
    writer.release()
    steps = 12

    child = start_chat(artifacts["int4"], "--max-new-tokens", steps, "--camera", video)
    answers = []
    text, adapter, _ = say(child, "Hello there.")
    answers.append(text)
    assert adapter == "none"
    assert "attached audio 1" in command(child, f"/audio {clip}")
    text, adapter, _ = say(child, "What did I ask?")
    answers.append(text)
    assert adapter == "speech"
    assert "image file" in command(child, f"/image {tmp_path / 'missing.png'}")  # an error, and the session goes on
    assert "attached image 1" in command(child, f"/image {picture}")
    text, adapter, _ = say(child, "Answer it for this picture.")
    answers.append(text)
    assert adapter == "vision"  # the clip is still in the conversation: audio with an image is the vision adapter

    # The answers are the model's greedy answers to the whole conversation, media kept with their turns.
    model = Phi4MMEdge.load(artifacts["int4"])
    messages = []
    for user, answer in zip(["Hello there.", "<|audio_1|>What did I ask?", "<|image_1|>Answer it for this picture."], answers):
        messages.append({"role": "user", "content": user})
        images, audios = ([picture] if "image" in user else []), ([clip] if "audio" in user or "image" in user else [])
        expected = model.generate(messages, images=images, audios=audios, max_new_tokens=steps).text()
        assert answer == expected
        messages.append({"role": "assistant", "content": answer})

    assert "conversation cleared" in command(child, "/reset")
    text, adapter, _ = say(child, "Hello there.")
    assert adapter == "none" and text == answers[0]  # nothing of the earlier conversation is left
    assert "attached image 1" in command(child, "/snap")  # numbering starts again after /reset
    _, adapter, _ = say(child, "What is this?")
    assert adapter == "vision"
    assert "/snap" in command(child, "/help")
    child.sendline("/quit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0


def test_ctrl_c_stops_an_answer_and_the_next_turn_is_exact(artifacts):
    # ~3 s of the tiny model (~500 tokens/s): Ctrl-C comes long before the end, with room for a
    # loaded machine. The stopped answer plus the next one's 1500 fit the 4096-token default context.
    steps = 1500
    child = start_chat(artifacts["int4"], "--max-new-tokens", steps)
    child.sendline("Tell me a long story.")
    child.expect_exact("phi4mm> ")
    child.expect(r"\w+ ")  # the answer is streaming
    child.sendintr()
    shown = child.before + child.after
    child.expect(STOPPED)
    stopped = (shown + child.before).replace("^C", "")  # the terminal echoes Ctrl-C as ^C, wherever the stream was
    assert child.match.group(1) == "none"
    child.expect_exact("you> ")
    text, adapter, tokens = say(child, "Go on.")
    # The random weights never pick an end token here, so the answer runs to the limit: proof
    # that the stopped answer above was stopped, not finished.
    assert adapter == "none" and tokens == steps

    # The stopped answer stays in the history as far as it was shown, and the next answer is the
    # model's answer to that history: no state of the stopped generation leaks into it.
    model = Phi4MMEdge.load(artifacts["int4"])
    history = [{"role": "user", "content": "Tell me a long story."}]
    full = model.generate(history, max_new_tokens=steps)
    full.text()
    assert full.result.finish_reason == "length"  # it would have run on: Ctrl-C cut it short
    assert stopped and full.result.text.startswith(stopped) and len(stopped) < len(full.result.text)
    history += [{"role": "assistant", "content": stopped}, {"role": "user", "content": "Go on."}]
    assert text == model.generate(history, max_new_tokens=steps).text()

    child.sendintr()  # Ctrl-C at the prompt leaves cleanly
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0
