"""What people run: the command-line front ends over runtime/ (run, demo, chat, transcribe,
camera, serve)."""
