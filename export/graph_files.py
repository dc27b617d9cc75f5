"""Writing one graph into the artifact folder: built into a `Graph` whose weights stream to a
data file, finished the way its target needs (`GraphFinish`), saved; and reading back which data
files a saved graph names."""

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import onnx

from .onnx_graph import ExternalData, Graph, every_graph


@dataclass(frozen=True)
class GraphFinish:
    """What a target does to a built graph before it is saved: its weights' element type in the
    data file, and a pass over its nodes (DirectML respells ops and makes activations fp16)."""

    float16_weights: bool = False
    respell: Callable[[Graph], None] | None = None


AS_BUILT = GraphFinish()


def write_graph(out: Path, file_name: str, build, finish: GraphFinish = AS_BUILT):
    """Build one graph with its weights streaming to `<file_name>.data`; returns build's result."""
    data = ExternalData(out / f"{file_name}.data", float16=finish.float16_weights)
    result = write_graph_to(out, file_name, data, build, finish)
    data.close()
    return result


def write_graph_to(out: Path, file_name: str, data: ExternalData, build, finish: GraphFinish = AS_BUILT):
    """Build one graph whose weights go to `data` (which may be shared) and save it."""
    graph = Graph(file_name.removesuffix(".onnx"), data)
    result = build(graph)
    if finish.respell:
        finish.respell(graph)
    graph.save(out / file_name)
    return result


def external_data_files(graph_path: Path) -> list[str]:
    """The files a saved graph's initializers point at (its weights outside the .onnx file)."""
    model = onnx.load(str(graph_path), load_external_data=False)
    return sorted({e.value for graph in every_graph(model.graph) for tensor in graph.initializer
                   for e in tensor.external_data if e.key == "location"})
