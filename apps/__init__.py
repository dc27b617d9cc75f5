"""What people run: the command-line front ends over runtime/ (run, demo; chat, transcribe,
camera and serve come with the vision and speech paths)."""
