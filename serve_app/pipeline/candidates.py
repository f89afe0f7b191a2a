"""YOLOv8-style candidate rows chosen where the session runs, not after it.

A YOLOv8 head writes ``[N, 4 + C + E, A]``: for YOLOv8n at 640, 8,400 anchors of 84 floats, 2.8 MB
per image, nearly all of them below any threshold a request asks for. On a GPU that whole tensor
crossed to pageable host memory on every call, and NumPy then took the class maximum of every row.
:func:`append_candidate_filter` adds to the graph the rows that can pass: the class maximum of each
anchor, compared with a ``score_floor`` input (the lowest confidence of the batch's requests), and
the rows above it gathered, image after image and anchors in their order, with how many each image
has. Only those cross; the full output stays where it was computed. A request's own threshold then
runs on the host over those rows, as it did over all of them: the selection sees the same rows in
the same order, so the answers are the same (``tests/test_candidate_filter.py``).

The floor is a required input; :data:`DEFAULT_FEEDS` has the value a call that does not choose
one feeds (warm-ups): minus infinity, every row kept. A row with a NaN score is kept too, as the
host's selection keeps it.

>>> rows = CandidateRows(np.arange(12, dtype=np.float32).reshape(3, 4), np.array([2, 0, 1]))
>>> rows[0].shape, rows[1].shape, rows[2][:, 0].tolist()  # channels first, as the head writes them
((4, 2), (4, 0), [8.0, 9.0, 10.0, 11.0])
>>> later = rows[1:3]  # images 1 and 2, as a batch's rows are sliced by request
>>> len(later), later.counts.tolist(), later[1][0].tolist(), len(rows[:2]), len(rows[3:])
(2, [0, 1], [8.0], 2, 0)
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from serve_app.errors import ModelLoadError

CANDIDATES = "candidates"  # (M, 4 + C + E) float: the kept rows of every image, image after image
COUNTS = "candidate_counts"  # (N,) int64: how many of them each image has
FLOOR = "score_floor"  # () float: a row is kept unless its best class score is <= this
OUTPUTS = (CANDIDATES, COUNTS)
DEFAULT_FEEDS = {FLOOR: np.array(-np.inf, np.float32)}


def score_floor(confidence: float) -> np.ndarray:
    """The floor for a threshold of ``confidence``: the float32 just below it, so that the rows kept
    on the device are a superset of those the host's comparison passes, whatever its precision.

    >>> f = score_floor(0.5)
    >>> f.shape, f.dtype.name, float(f) < 0.5 == float(np.nextafter(f, np.float32(1)))
    ((), 'float32', True)
    """
    return np.array(np.nextafter(np.float32(confidence), np.float32(-np.inf)), np.float32)


def append_candidate_filter(model_bytes: bytes, num_classes: int) -> bytes:
    """Return the model with :data:`FLOOR` as a second input and :data:`CANDIDATES` and
    :data:`COUNTS` as outputs after its own, for a first output ``[N, 4 + C + E, A]`` (the rows;
    a segmentation head's prototypes, its second output, stay as they are). :class:`ModelLoadError`
    where the graph does not have that shape of output (or its opset is older than 12)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load_from_string(bytes(model_bytes))
    graph = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 12:
        raise ModelLoadError(f"a candidate filter needs opset 12 or later, the model has {opset}")
    if not graph.output:
        raise ModelLoadError("a candidate filter needs an output")
    out = graph.output[0]
    dims = out.type.tensor_type.shape.dim
    if out.type.tensor_type.elem_type != TensorProto.FLOAT or len(dims) != 3:
        raise ModelLoadError("a candidate filter needs a float [N, 4 + C + E, A] first output")
    channels = dims[1].dim_value if dims[1].HasField("dim_value") else None
    if channels is not None and channels < 4 + num_classes:
        raise ModelLoadError(f"output rows of {channels} cannot hold 4 box values and {num_classes} classes")
    names = {n for node in graph.node for n in node.output} | {i.name for i in graph.initializer}
    if any(n in names for n in (*OUTPUTS, FLOOR)):
        raise ModelLoadError("the model already has tensors named like the candidate filter's")

    def const(name: str, values: Sequence[int]) -> str:
        graph.initializer.append(numpy_helper.from_array(np.asarray(values, np.int64), name))
        return name

    def reduce(op: str, x: str, axis: int, y: str, new_axes_input: int) -> onnx.NodeProto:
        # from opset 18 (ReduceMax) and 13 (ReduceSum) the axes are an input, before an attribute
        if opset >= new_axes_input:
            return helper.make_node(op, [x, const(f"{y}_axes", [axis])], [y], keepdims=0)
        return helper.make_node(op, [x], [y], axes=[axis], keepdims=0)

    graph.input.append(helper.make_tensor_value_info(FLOOR, TensorProto.FLOAT, []))
    scores = "candidate_scores"
    graph.initializer.append(numpy_helper.from_array(np.array(np.inf, np.float32), "candidate_inf"))
    graph.node.extend([
        helper.make_node("Slice", [out.name, const("candidate_score_start", [4]),
                                   const("candidate_score_end", [4 + num_classes]), const("candidate_axis", [1])],
                         [scores]),
        # a NaN score counts as +inf: its row is kept, as the host's selection keeps it (ONNX Runtime's
        # ReduceMax skips NaN in some kernels and not in others)
        helper.make_node("IsNaN", [scores], ["candidate_nan"]),
        helper.make_node("Where", ["candidate_nan", "candidate_inf", scores], ["candidate_scored"]),
        reduce("ReduceMax", "candidate_scored", 1, "candidate_best", 18),  # (N, A)
        helper.make_node("LessOrEqual", ["candidate_best", FLOOR], ["candidate_below"]),
        helper.make_node("Not", ["candidate_below"], ["candidate_keep"]),
        helper.make_node("NonZero", ["candidate_keep"], ["candidate_where"]),  # (2, M): image, anchor; row-major
        helper.make_node("Transpose", ["candidate_where"], ["candidate_pairs"], perm=[1, 0]),
        helper.make_node("Transpose", [out.name], ["candidate_rows"], perm=[0, 2, 1]),  # (N, A, D)
        helper.make_node("GatherND", ["candidate_rows", "candidate_pairs"], [CANDIDATES]),  # (M, D)
        helper.make_node("Cast", ["candidate_keep"], ["candidate_kept"], to=TensorProto.INT64),
        reduce("ReduceSum", "candidate_kept", 1, COUNTS, 13),  # (N,)
    ])
    graph.output.extend([helper.make_tensor_value_info(CANDIDATES, TensorProto.FLOAT, None),
                         helper.make_tensor_value_info(COUNTS, TensorProto.INT64, None)])
    return model.SerializeToString()


@dataclass(frozen=True)
class CandidateRows:
    """A batch's candidate rows as the filter wrote them. ``self[i]`` is image ``i``'s rows
    channels first, ``[4 + C + E, M_i]``, the layout YOLOv8's decoder reads."""

    rows: np.ndarray  # (M, D)
    counts: np.ndarray  # (N,)
    _starts: np.ndarray = field(init=False, repr=False)  # where each image's rows start, and the end

    def __post_init__(self) -> None:
        object.__setattr__(self, "_starts", np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64))

    def __len__(self) -> int:
        return len(self.counts)

    def __getitem__(self, i: int | slice) -> Any:
        """Image ``i``'s rows, channels first; or, for a slice, those images' :class:`CandidateRows`
        (one request's share of a batch)."""
        starts = self._starts
        if isinstance(i, slice):
            first, stop, step = i.indices(len(self))
            if step != 1:
                raise ValueError("CandidateRows slices images in order, one after another")
            return CandidateRows(self.rows[starts[first]:starts[max(first, stop)]], self.counts[first:stop])
        return self.rows[starts[i]:starts[i + 1]].T
