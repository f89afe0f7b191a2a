"""NMS invariants (property tests) and the detection selection rules."""
import numpy as np
from hypothesis import given, settings, strategies as st

from serve_app.pipeline.geometry import box_iou
from serve_app.tasks.detection import Candidates, decode_yolov5, decode_yolov8, select
from serve_app.tasks.nms import batched_nms, nms


@st.composite
def box_sets(draw):
    n = draw(st.integers(0, 40))
    xy = np.array(draw(st.lists(st.tuples(st.floats(0, 100), st.floats(0, 100)), min_size=n, max_size=n)), float).reshape(-1, 2)
    wh = np.array(draw(st.lists(st.tuples(st.floats(1, 50), st.floats(1, 50)), min_size=n, max_size=n)), float).reshape(-1, 2)
    scores = np.array(draw(st.lists(st.floats(0, 1), min_size=n, max_size=n)), float)
    classes = np.array(draw(st.lists(st.integers(0, 2), min_size=n, max_size=n)), int)
    return np.concatenate([xy, xy + wh], axis=1), scores, classes


@settings(max_examples=300, deadline=None)
@given(box_sets(), st.floats(0.05, 0.95))
def test_nms_invariants(data, thr):
    boxes, scores, _ = data
    keep = nms(boxes, scores, thr)
    assert len(set(keep.tolist())) == len(keep)
    assert list(scores[keep]) == sorted(scores[keep], reverse=True)
    if len(keep) > 1:  # kept boxes never overlap more than the threshold
        iou = box_iou(boxes[keep], boxes[keep])
        np.fill_diagonal(iou, 0)
        assert iou.max() <= thr + 1e-6
    for i in set(range(len(boxes))) - set(keep.tolist()):  # every dropped box is covered by a better kept one
        assert (box_iou(boxes[i:i + 1], boxes[keep])[0] > thr - 1e-6).any()
    if len(boxes):
        assert int(np.argmax(scores)) in keep.tolist() or scores.max() == scores[keep[0]]


@settings(max_examples=200, deadline=None)
@given(box_sets(), st.floats(0.05, 0.95))
def test_class_aware_nms_never_suppresses_across_classes(data, thr):
    boxes, scores, classes = data
    keep = set(batched_nms(boxes, scores, classes, thr).tolist())
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        assert set(idx[nms(boxes[idx], scores[idx], thr)].tolist()) == keep & set(idx.tolist())


def test_agnostic_nms_suppresses_across_classes():
    boxes = np.array([[0, 0, 10, 10], [0, 0, 10, 10.5]], float)
    scores, classes = np.array([0.9, 0.8]), np.array([0, 1])
    assert len(batched_nms(boxes, scores, classes, 0.5, class_agnostic=False)) == 2
    assert batched_nms(boxes, scores, classes, 0.5, class_agnostic=True).tolist() == [0]


def _v8_output():
    # 3 classes, 4 anchors: two overlapping circles, one square, one below threshold
    cols = [
        [50, 50, 20, 20, 0.9, 0.05, 0.0],
        [51, 50, 20, 20, 0.8, 0.1, 0.0],
        [150, 80, 30, 30, 0.0, 0.7, 0.1],
        [200, 200, 10, 10, 0.1, 0.1, 0.2],
    ]
    return np.array(cols, np.float32).T


def test_yolov8_and_yolov5_layouts_decode_the_same():
    v8 = _v8_output()
    rows = v8.T
    obj = rows[:, 4:].max(axis=1, keepdims=True)
    v5 = np.concatenate([rows[:, :4], obj, rows[:, 4:] / obj], axis=1)
    a = select(decode_yolov8(v8, 3), confidence=0.25, iou_threshold=0.5)
    b = select(decode_yolov5(v5, 3), confidence=0.25, iou_threshold=0.5)
    np.testing.assert_allclose(a.boxes, [[40, 40, 60, 60], [135, 65, 165, 95]])
    assert a.class_id.tolist() == [0, 1] and b.class_id.tolist() == [0, 1]
    np.testing.assert_allclose(a.confidence, b.confidence, rtol=1e-6)
    np.testing.assert_allclose(a.boxes, b.boxes)


def test_class_filter_max_detections_and_candidates():
    c = decode_yolov8(_v8_output(), 3)
    only_square = select(c, confidence=0.25, iou_threshold=0.5, class_ids_allowed=np.array([1]))
    assert only_square.class_id.tolist() == [1]
    assert len(select(c, confidence=0.25, iou_threshold=0.5, max_detections=1).boxes) == 1
    best_only = select(c, confidence=0.25, iou_threshold=0.99, max_candidates=1)
    assert best_only.confidence.tolist() == [np.float32(0.9)]
    none = select(Candidates(np.zeros((0, 4)), np.zeros((0, 3)), np.zeros((0, 0))), confidence=0.1, iou_threshold=0.5)
    assert len(none.boxes) == 0


def _select_by_full_argmax(c: Candidates, confidence: float, iou_threshold: float, class_ids_allowed, max_candidates: int):
    """The selection as first written: best class of every row (class filter applied), then threshold."""
    scores = c.scores
    if class_ids_allowed is not None:
        masked = np.full_like(scores, -1.0)
        masked[:, class_ids_allowed] = scores[:, class_ids_allowed]
        scores = masked
    class_id = scores.argmax(axis=1)
    conf = scores[np.arange(len(scores)), class_id]
    keep = np.flatnonzero(conf > confidence)
    if keep.size > max_candidates:
        keep = keep[np.argsort(-conf[keep], kind="stable")[:max_candidates]]
    boxes, conf, class_id = c.boxes[keep], conf[keep], class_id[keep]
    kept = batched_nms(boxes, conf, class_id, iou_threshold, False)[:300]
    return boxes[kept], conf[kept], class_id[kept], c.extra[keep][kept]


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**31), n=st.integers(0, 400), classes=st.integers(1, 6), conf=st.floats(0.05, 0.95),
       filtered=st.booleans(), cap=st.sampled_from([1, 7, 3000]), nan=st.booleans())
def test_select_prefilter_gives_the_full_argmax_answer(seed, n, classes, conf, filtered, cap, nan):
    """select() looks for the best class only among rows with any class above the threshold; on a
    YOLOv8-shaped transposed view, with ties, NaNs, class filters and the candidate cap, it gives
    exactly what taking every row's best class first gives."""
    rng = np.random.default_rng(seed)
    grid = rng.random((4 + classes + 2, n)).astype(np.float32)
    grid[:4] *= 100
    grid[4:4 + classes] = np.round(grid[4:4 + classes], 1)  # ties between classes
    if nan and n:
        grid[4 + rng.integers(classes), rng.integers(n)] = np.nan
    c = decode_yolov8(grid, classes)
    allowed = np.array(sorted(rng.choice(classes, size=max(1, classes // 2), replace=False))) if filtered else None
    got = select(c, confidence=conf, iou_threshold=0.5, class_ids_allowed=allowed, max_candidates=cap)
    want = _select_by_full_argmax(c, conf, 0.5, allowed, cap)
    for a, b in zip((got.boxes, got.confidence, got.class_id, got.extra), want):
        np.testing.assert_array_equal(a, b)
