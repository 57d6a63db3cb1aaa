"""Small helpers to write ONNX graphs by hand, and the resize every NEST pipeline starts with."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 18  # Resize with antialias needs opset 18
INPUT_NAME = "images"
RESIZED_PIXELS = "resized_rounded"  # the integer-valued resized images every network starts from


class GraphBuilder:
    """Collects nodes and initialisers; constants with the same name are stored once."""

    def __init__(self):
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, onnx.TensorProto] = {}
        self._count = 0

    def const(self, name: str, array) -> str:
        array = np.ascontiguousarray(array)
        if name in self.initializers:
            if not np.array_equal(numpy_helper.to_array(self.initializers[name]), array):
                raise ValueError(f"constant {name!r} is already defined with other values")
        else:
            self.initializers[name] = numpy_helper.from_array(array, name)
        return name

    def op(self, op_type: str, inputs: Sequence[str], name: str | None = None, **attrs) -> str:
        self._count += 1
        output = name or f"{op_type.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op_type, list(inputs), [output], name=output, **attrs))
        return output

    def model(self, name: str, doc: str, output: str, output_shape: list,
              graph_inputs: list[onnx.ValueInfoProto] | None = None) -> onnx.ModelProto:
        """A checked model with one float32 output; the input is the uint8 image batch unless
        ``graph_inputs`` says otherwise."""
        graph_inputs = graph_inputs or [helper.make_tensor_value_info(
            INPUT_NAME, TensorProto.UINT8, ["N", 3, "S", "S"])]
        graph = helper.make_graph(
            self.nodes, name, graph_inputs,
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, output_shape)],
            initializer=list(self.initializers.values()), doc_string=doc)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                  producer_name="nest_rt_export")
        stamp_minimum_ir_version(model)
        onnx.checker.check_model(model)
        return model


def stamp_minimum_ir_version(model: onnx.ModelProto) -> None:
    """The lowest IR version the model's opsets need, instead of the newest the onnx package
    writes (IR 14 with onnx 1.23, which onnxruntime before 1.32 refuses to load)."""
    model.ir_version = helper.find_min_ir_version_for(list(model.opset_import), ignore_unknown=True)


def strip_build_records(model: onnx.ModelProto) -> None:
    """Drop what torch.onnx and onnxscript record in each node about how it was made: its
    metadata_props (a stack trace naming the exporter's and torch's source files by absolute
    path, the fx node, module names, rewrite rules) and doc_string. No engine reads them;
    without them a graph holds no path of the machine that exported it, and exports of the same
    weights are the same bytes wherever they run."""
    for node in _every_node(model):
        del node.metadata_props[:]
        node.ClearField("doc_string")


def _every_node(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    """The nodes of the main graph, of its subgraphs (If, Loop, Scan bodies) and of its functions."""
    pending = [model.graph]
    for function in model.functions:
        yield from function.node
    while pending:
        graph = pending.pop()
        for node in graph.node:
            yield node
            for attribute in node.attribute:
                pending.extend([attribute.g] if attribute.HasField("g") else attribute.graphs)


def resized_pixels(g: GraphBuilder, size: tuple[int, int] | int, portable: bool = False) -> str:
    """uint8 images [N,3,H,W] -> float32 [N,3,h,w] in 0..255, as torchvision resizes integer tensors:
    to ``size`` = (h, w), or, for an int, so that the shorter side is ``size`` (torchvision's
    Resize(int): the longer side becomes int(size * long / short), the aspect ratio kept).

    torchvision's tensor Resize (antialias=True) casts to float, interpolates bilinearly with an
    antialiasing triangle filter on half-pixel centres, rounds half to even and casts back. ONNX
    Resize matches it with exclude_outside=1 (the default 0 differs by up to 13 grey levels on
    the border pixels). When the image already has the target size, the resize is an exact
    identity, as upstream's no-op.

    ``portable`` computes the same resize with two matrix products instead of Resize's antialias
    (see _triangle_filter_resize): OpenVINO 2026.4 downsamples antialiased differently from the
    ONNX standard (by up to 78 grey levels at 300 -> 256; its upsampling matches).
    """
    pixels = g.op("Cast", [INPUT_NAME], to=TensorProto.FLOAT)
    shape = g.op("Shape", [INPUT_NAME])
    batch_and_channels = g.op("Slice", [shape, g.const("start_0", np.array([0])), g.const("stop_2", np.array([2]))])
    if isinstance(size, int):
        target_hw = _shorter_side_target(g, shape, size)
    else:
        target_hw = g.const(f"target_hw_{size[0]}x{size[1]}", np.array(size))
    if portable:
        resized = _triangle_filter_resize(g, pixels, shape, target_hw)
    else:
        sizes = g.op("Concat", [batch_and_channels, target_hw], axis=0)
        resized = g.op("Resize", [pixels, "", "", sizes], name="resized", mode="linear", antialias=1,
                       exclude_outside=1, coordinate_transformation_mode="half_pixel")
    return g.op("Round", [resized], name=RESIZED_PIXELS)


def _triangle_filter_resize(g: GraphBuilder, pixels: str, shape: str, target_hw: str) -> str:
    """float [N,3,H,W] -> [N,3,h,w] with target_hw = [h, w] (int64): rows @ pixels @ columns^T,
    each matrix the antialiased bilinear weights of one axis (_triangle_weights). Standard
    MatMuls: every ONNX engine computes them alike."""
    def part(tensor: str, start: int, stop: int) -> str:
        return g.op("Slice", [tensor, g.const(f"start_{start}", np.array([start])), g.const(f"stop_{stop}", np.array([stop]))])
    rows = _triangle_weights(g, part(shape, 2, 3), part(target_hw, 0, 1))       # [h, H]
    columns = _triangle_weights(g, part(shape, 3, 4), part(target_hw, 1, 2))    # [w, W]
    vertical = g.op("MatMul", [rows, pixels])                                    # [N, 3, h, W]
    return g.op("MatMul", [vertical, g.op("Transpose", [columns], perm=[1, 0])], name="resized")


def _triangle_weights(g: GraphBuilder, source: str, target: str) -> str:
    """The [target, source] matrix of antialiased bilinear interpolation along one axis (sizes as
    int64 [1]): output i is centred at c = (i + 0.5) * scale in the input, scale = source /
    target; input j weighs max(0, 1 - |j + 0.5 - c| / max(scale, 1)), and each row is divided by
    its sum. Only inputs inside the image count (exclude_outside=1). The same size gives the
    identity matrix, so no resize is an exact copy."""
    def as_float(value: str) -> str:
        return g.op("Cast", [value], to=TensorProto.FLOAT)

    def scalar(vector: str) -> str:  # [1] -> [] (Range takes scalars; GraphBuilder's constants are [1])
        return g.op("Squeeze", [vector, g.const("axis_0", np.array([0]))])

    def positions(count: str) -> str:  # 0.5, 1.5, ..., count - 0.5
        indices = g.op("Range", [scalar(g.const("zero_int", np.array([0]))), scalar(count),
                                 scalar(g.const("one_int", np.array([1])))])
        return g.op("Add", [as_float(indices), g.const("half", np.float32(0.5))])
    one = g.const("one", np.float32(1.0))
    scale = g.op("Div", [as_float(source), as_float(target)])                               # [1]
    centres = g.op("Mul", [positions(target), scale])                                       # [target]
    distance = g.op("Abs", [g.op("Sub", [g.op("Unsqueeze", [positions(source), g.const("axis_0", np.array([0]))]),
                                         g.op("Unsqueeze", [centres, g.const("axis_1", np.array([1]))])])])
    weights = g.op("Relu", [g.op("Sub", [one, g.op("Div", [distance, g.op("Max", [scale, one])])])])
    return g.op("Div", [weights, g.op("ReduceSum", [weights, g.const("axis_1", np.array([1]))], keepdims=1)])


def _shorter_side_target(g: GraphBuilder, shape: str, size: int) -> str:
    """[h, w] (int64) of torchvision's Resize(size) for images of ``shape`` [N, 3, H, W]: the
    shorter side becomes ``size``, the other int(size * long / short). Both are
    (size * side) // short: for the shorter side that is ``size`` itself. Integer division equals
    torchvision's int(size * long / short) for any real image side: the exact quotient lies at
    least 1/short from an integer, far beyond float64's rounding. (No Where: onnxruntime 1.18's
    shape inference reads the sizes of a Where-built target as empty and refuses the graph.)"""
    height_width = g.op("Slice", [shape, g.const("start_2", np.array([2])), g.const("stop_4", np.array([4]))])
    height = g.op("Slice", [shape, g.const("start_2", np.array([2])), g.const("stop_3", np.array([3]))])
    width = g.op("Slice", [shape, g.const("start_3", np.array([3])), g.const("stop_4", np.array([4]))])
    short = g.op("Min", [height, width])
    scaled = g.op("Mul", [height_width, g.const(f"shorter_side_{size}", np.array([size]))])
    return g.op("Div", [scaled, short])  # int64: floors for positive values


def resize_session(graph_path: Path):
    """An onnxruntime CPU session of the nodes of the graph at ``graph_path`` that turn the input
    images into RESIZED_PIXELS: the shipped graph's own resize, without the network."""
    import onnxruntime as ort
    model = onnx.load(graph_path, load_external_data=False)  # the resize's constants are inline
    producers = {output: node for node in model.graph.node for output in node.output}
    needed, pending = set(), [RESIZED_PIXELS]
    while pending:  # walk back from the resized pixels to the input
        node = producers.get(pending.pop())
        if node is not None and id(node) not in needed:
            needed.add(id(node))
            pending.extend(node.input)
    nodes = [node for node in model.graph.node if id(node) in needed]
    used = {name for node in nodes for name in node.input}
    graph = helper.make_graph(nodes, "resize", [i for i in model.graph.input if i.name == INPUT_NAME],
                              [helper.make_tensor_value_info(RESIZED_PIXELS, TensorProto.FLOAT, None)],
                              initializer=[t for t in model.graph.initializer if t.name in used])
    resize = helper.make_model(graph, opset_imports=model.opset_import, ir_version=model.ir_version)
    return ort.InferenceSession(resize.SerializeToString(), providers=["CPUExecutionProvider"])


def probe_session(graph_path: Path, extra_outputs: Sequence[str]):
    """An onnxruntime CPU session of the graph at ``graph_path`` that also returns the named
    intermediate values, after its own outputs. The graph is the one written to the bundle,
    unchanged but for the added outputs; a temporary copy beside it (so that its external data
    resolves) is removed once the session is created."""
    import onnxruntime as ort
    graph_path = Path(graph_path)
    model = onnx.load(graph_path, load_external_data=False)
    model.graph.output.extend(helper.make_empty_tensor_value_info(name) for name in extra_outputs)
    handle, temporary = tempfile.mkstemp(suffix=".probe.onnx", dir=graph_path.parent)
    os.close(handle)
    try:
        onnx.save_model(model, temporary)
        return ort.InferenceSession(temporary, providers=["CPUExecutionProvider"])
    finally:
        os.unlink(temporary)


def save_with_external_data(model: onnx.ModelProto, path: Path) -> list[Path]:
    """Save with all weights in ``<name>.data`` beside the graph (memory-mappable, no 2 GB cap).
    Returns the files written."""
    data = path.with_name(path.name + ".data")
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=data.name, size_threshold=1024)
    return [path, data]
