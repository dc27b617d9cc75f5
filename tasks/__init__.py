"""The trained reference model's tasks, torch-free: synthetic questions with one exact answer
(text, rendered pictures, espeak-ng clips), the held-out split, and the held-out task set's files.

Generators here need numpy, Pillow and soundfile (and espeak-ng for new clips); the task set
they write is read without any of the generators, so eval and the demo run on a fresh machine.
"""
