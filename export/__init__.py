"""Checkpoint -> artifact folder. Reads a Hugging Face Phi-4-multimodal folder (either layout)
one tensor at a time and writes ONNX graphs, adapter files and the manifest.
Never builds the PyTorch model; never imports runtime/ internals or apps/."""
