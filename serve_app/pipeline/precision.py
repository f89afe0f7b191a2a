"""float16 weights and arithmetic for a GPU session: the ONNX graph converted at load.

:func:`convert_to_fp16` runs onnxconverter-common's ``convert_float_to_float16`` with the graph's
inputs and outputs kept float32 (``keep_io_types``: callers feed and read the same arrays) and
these parts kept float32, where half precision loses what the answers need:

- ops whose float16 form is lossy or missing (:data:`FP32_OPS`: ``Cast``, whose target type the
  converter does not rewrite; ``Resize``; ``Softmax``; ``TopK``/``NonMaxSuppression``; the
  converter's own list). They are blocked by node name, not by op type: the converter inserts
  ``Cast`` nodes of its own and, with ``Cast`` blocked by type, casts its own casts without end;
- the uint8 input prefix of ``pipeline/graph.py`` (cast, scale, bias: pixels as float32);
- the *tail*: every node downstream of the graph's last heavy op (``Conv``, ``Gemm``, ``MatMul``
  ... with a weight of :data:`SMALL_WEIGHT` elements or more), i.e. YOLO's DFL, the box decode,
  the class sigmoid and the like. Those are cheap elementwise ops on
  pixel-scale values, where float16's spacing (0.25-0.5 px above 256) would move boxes.

>>> # fp16_bytes = convert_to_fp16(model_bytes)
"""
from __future__ import annotations

import threading
import warnings
from collections.abc import Iterable

import numpy as np

FP32_OPS: tuple[str, ...] = ("Cast", "Resize", "Upsample", "Softmax", "LogSoftmax", "TopK", "NonMaxSuppression",
                             "RoiAlign", "Range", "CumSum", "Min", "Max", "ReduceMax", "ReduceMin", "ArgMax", "ArgMin",
                             "Einsum")
HEAVY_OPS: frozenset[str] = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Attention", "MultiHeadAttention"})
SMALL_WEIGHT = 1024  # a heavy op with a constant weight of fewer elements (YOLO's DFL conv: 16) is tail
PREFIX_OUTPUT = "normalised_input"  # what pipeline/graph.py's uint8 prefix ends in
# warnings.catch_warnings swaps process-wide state: one conversion at a time
_convert_lock = threading.Lock()


def _name_nodes(graph) -> None:
    """Give every unnamed node a unique name: the converter names its casts after the node."""
    taken = {n.name for n in graph.node if n.name}
    for k, node in enumerate(graph.node):
        if not node.name:
            name = f"{node.op_type}_{k}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)


def _upstream_of(graph, outputs: Iterable[str]) -> set[str]:
    """Names of the nodes that produce ``outputs``, directly or through other nodes."""
    producer = {o: n for n in graph.node for o in n.output}
    seen: set[str] = set()
    stack = [producer[o] for o in outputs if o in producer]
    while stack:
        node = stack.pop()
        if node.name in seen:
            continue
        seen.add(node.name)
        stack.extend(producer[i] for i in node.input if i in producer)
    return seen


def fp32_nodes(graph, keep_ops: Iterable[str] = FP32_OPS) -> set[str]:
    """The nodes kept in float32: those of ``keep_ops``, the uint8 prefix and the tail."""
    ops = set(keep_ops)
    sizes = {i.name: int(np.prod(i.dims)) for i in graph.initializer}
    heavy = [n for n in graph.node if n.op_type in HEAVY_OPS
             and not (len(n.input) > 1 and sizes.get(n.input[1], SMALL_WEIGHT) < SMALL_WEIGHT)]
    # a node feeds a heavy op when it is upstream of one; the rest (after the last heavy ops) is the tail
    feeds_heavy = _upstream_of(graph, [i for n in heavy for i in n.input]) | {n.name for n in heavy}
    keep = {n.name for n in graph.node if n.name not in feeds_heavy} if heavy else set()
    keep |= _upstream_of(graph, [PREFIX_OUTPUT])
    return keep | {n.name for n in graph.node if n.op_type in ops}


def convert_to_fp16(model_bytes: bytes, keep_ops: Iterable[str] = FP32_OPS) -> bytes:
    """The model with float16 weights and activations, float32 inputs/outputs and kept parts."""
    import onnx
    from onnxconverter_common import float16

    model = onnx.load_from_string(bytes(model_bytes))
    _name_nodes(model.graph)
    float_outputs = [o.name for o in model.graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    with _convert_lock, warnings.catch_warnings():
        # weights below float16's range are clamped to 1e-7, each with a UserWarning: expected here
        warnings.filterwarnings("ignore", message="the float32 number .* will be truncated", category=UserWarning)
        converted = float16.convert_float_to_float16(model, keep_io_types=True,
                                                     op_block_list=float16.DEFAULT_OP_BLOCK_LIST,
                                                     node_block_list=sorted(fp32_nodes(model.graph, keep_ops)))
    _float32_outputs(converted.graph, float_outputs)
    return converted.SerializeToString()


def _float32_outputs(graph, names: list[str]) -> None:
    """Make the ``names`` outputs float32 again where the converter left them float16.

    ``keep_io_types`` misses outputs made by a blocked node: the converter casts the node's
    float32 result to float16 and declares the output float16. That cast is turned into a cast to
    float32 (the value never passes through float16); an output really computed in float16 gets a
    cast appended.
    """
    from onnx import TensorProto, helper

    producer = {o: n for n in graph.node for o in n.output}
    for out in graph.output:
        if out.name not in names or out.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        node = producer.get(out.name)
        if node is not None and node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to":
                    attr.i = TensorProto.FLOAT
        else:
            half = out.name + "_fp16"
            if node is not None:
                node.output[list(node.output).index(out.name)] = half
            graph.node.append(helper.make_node("Cast", [half], [out.name], to=TensorProto.FLOAT, name=half + "_to_fp32"))
        out.type.tensor_type.elem_type = TensorProto.FLOAT
