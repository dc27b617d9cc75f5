"""The command-line options the apps share: the model to load (ARTIFACT, --provider, --threads, ...)
and --max-crops. Light to import (the CLI reads it for every command): nothing heavy at the top."""

# Camera frames and phone photos: 4 tiles keep a 16:9 frame at 2 tiles + the global view (3 crops,
# 753 tokens, about a fifth of the 16 crops and 3918 tokens it takes at the model's limit).
FAST_MAX_CROPS = 4
FAST_MAX_CROPS_WHY = ": a 1920x1080 frame is then 3 crops instead of 16 (--max-crops 36 for full detail)"


def add_max_crops_argument(parser, default: int | None = None, why: str = "") -> None:
    """--max-crops for the apps that take images: fewer HD tiles = faster, fewer tokens, less detail."""
    default_note = f"Default {default}{why}" if default else \
        "Default: the artifact's limit (its manifest's vision max_crops; 36 for Phi-4-multimodal)"
    parser.add_argument("--max-crops", type=int, default=default, metavar="N",
                        help="cap each image's HD tiling at N tiles (+1 global view); fewer is faster and sees less "
                             "detail (README: Images). " + default_note)


def add_provider_argument(parser) -> None:
    """--provider for every command that loads a model."""
    from ..runtime.providers import CHOICES

    parser.add_argument("--provider", choices=CHOICES, default="auto",
                        help="where the graphs run; auto (default) = QNN for an NPU artifact when onnxruntime-qnn is "
                             "installed, else CPU")


def add_model_arguments(parser, max_new_tokens: int = 256) -> None:
    """What every app takes: ARTIFACT (optional: the bundled reference model) and --cache-dir,
    --provider, --threads, --context, --max-new-tokens, --temperature."""
    parser.add_argument("artifact", nargs="?",
                        help="an exported artifact folder; default: the bundled reference model (random weights)")
    parser.add_argument("--cache-dir", help="where the reference model is made once (default ~/.cache/phi4mm-edge)")
    add_provider_argument(parser)
    parser.add_argument("--threads", type=int, help="intra-op threads; default one per physical core")
    parser.add_argument("--context", type=int, help="tokens of KV cache (prompt + answer); default 4096")
    parser.add_argument("--max-new-tokens", type=int, default=max_new_tokens)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--verify", choices=["cached", "full"], default="cached",
                        help="cached (default): re-hash the files whose size or time changed, all of them weekly; "
                             "full: re-hash every file now")
