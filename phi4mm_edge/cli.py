"""The `phi4mm-edge` command: a table of subcommands. Each row names the module that owns the
command's options (`add_arguments(parser)`) and its work (`main(args)`); only the module of the
command being run is imported, so `run` works with the runtime's dependencies alone and `export` /
`make-reference` need the export extra.

This is the one place where the export side and the runtime side meet: a command given no
artifact gets the bundled reference model, made and exported here before its app starts."""

import argparse
import importlib
import sys
from collections.abc import Callable
from dataclasses import dataclass

from .apps.arguments import add_provider_argument
from .errors import Phi4MMError


def resolve_artifact(args) -> None:
    """No artifact given: make (once) and use the bundled reference model, and say its weights are random."""
    args.random_weights = args.artifact is None
    if args.artifact is None:
        from .bundled_model import bundled_artifact

        args.artifact = bundled_artifact(args.cache_dir)


def bundled_artifact_always(args) -> None:
    """demo: the bundled reference model, whatever else exists."""
    args.artifact = None
    resolve_artifact(args)


def bundled_artifact_when_quick(args) -> None:
    """bench: the bundled reference model for --quick without an ARTIFACT (else bench says what is missing)."""
    if args.quick and args.artifact is None:
        resolve_artifact(args)


@dataclass(frozen=True)
class Command:
    """A row of the table: the command's help line, its module, and how its ARTIFACT is found."""

    help: str
    module: str  # dotted path, imported only when this command runs
    resolve: Callable | None = None  # fills in args.artifact before main runs; None: it is main's to check
    add_arguments: str = "add_arguments"  # the module's functions, by name
    main: str = "main"
    more_arguments: tuple[Callable, ...] = ()  # added after the module's own

    def load(self):
        return importlib.import_module(self.module)


COMMANDS = {
    "make-reference": Command("write a tiny Phi-4-multimodal checkpoint (random weights, or --trained)",
                              "phi4mm_edge.export_command",
                              add_arguments="add_make_reference_arguments", main="make_reference"),
    "export": Command("export a checkpoint folder to an artifact folder", "phi4mm_edge.export_command"),
    "run": Command("answer one prompt with an exported artifact", "phi4mm_edge.apps.run", resolve_artifact),
    # benchmarks/ may not import apps/, where --provider is defined: the table adds it
    "bench": Command("latency and memory of an artifact (min/median/max), table + JSON + PNG",
                     "phi4mm_edge.benchmarks.bench", bundled_artifact_when_quick,
                     more_arguments=(add_provider_argument,)),
    "eval": Command("answer quality of an export of the trained reference: accuracy, agreement and KL against "
                    "the PyTorch reference", "phi4mm_edge.benchmarks.evaluate",
                    more_arguments=(add_provider_argument,)),
    "demo": Command("make the reference model, export it and answer with each adapter", "phi4mm_edge.apps.demo",
                    bundled_artifact_always),
    "chat": Command("a terminal chat: history, streaming, /image /audio /snap /rec", "phi4mm_edge.apps.chat",
                    resolve_artifact),
    "transcribe": Command("live transcription (or translation) of the microphone or a recording",
                          "phi4mm_edge.apps.transcribe", resolve_artifact),
    "camera": Command("describe the camera view on Enter or every N seconds", "phi4mm_edge.apps.camera",
                      resolve_artifact),
    "serve": Command("a local web page: ask with text, camera or microphone, answers streamed",
                     "phi4mm_edge.apps.serve", resolve_artifact),
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """Every command with its help line, and the options of `command` alone (its module is imported)."""
    parser = argparse.ArgumentParser(prog="phi4mm-edge", description="Phi-4-multimodal on device: export and run.")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, row in COMMANDS.items():
        subparser = commands.add_parser(name, help=row.help)
        if name == command:
            getattr(row.load(), row.add_arguments)(subparser)
            for add in row.more_arguments:
                add(subparser)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    # The command is the first word that is not an option (before it, the parser takes only --help).
    command = next((word for word in argv if not word.startswith("-")), None)
    args = build_parser(command).parse_args(argv)
    row = COMMANDS[args.command]
    try:
        if row.resolve is not None:
            row.resolve(args)
        getattr(row.load(), row.main)(args)
    except Phi4MMError as error:
        print(f"phi4mm-edge: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
