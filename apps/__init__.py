"""What people run: the command-line front ends over runtime/ (run, demo, chat, transcribe,
camera, serve), each a module with its options (`add_arguments(parser)`) and its work
(`main(args)`), named by phi4mm_edge/cli.py's table; `capture/` reads the camera and the microphone."""
