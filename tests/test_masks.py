"""Masks: COCO RLE round trip (and pycocotools' known encoding), polygons, mapping to the original."""
import numpy as np
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from serve_app.pipeline.geometry import letterbox_transform
from serve_app.tasks.masks import mask_to_original, mask_to_polygon, rle_decode, rle_encode


@settings(max_examples=200, deadline=None)
@given(arrays(np.bool_, st.tuples(st.integers(1, 30), st.integers(1, 30))))
def test_rle_round_trip(mask):
    assert (rle_decode(rle_encode(mask)) == mask).all()


def test_rle_matches_pycocotools_encoding():
    # runs [4, 2, 1, 2, 3] compress (pycocotools' scheme, deltas from the run two back) to "42102"
    m = np.zeros((3, 4), np.uint8)
    m[1:3, 1:3] = 1
    rle = rle_encode(m)
    assert rle["size"] == [3, 4]
    assert rle["counts"] == "42102"
    assert rle_decode(rle).tolist() == m.astype(bool).tolist()
    # uncompressed counts in column-major order: 4 zeros, 2 ones, 1 zero, 2 ones, 3 zeros
    from serve_app.tasks.masks import _decompress_counts
    assert _decompress_counts(rle["counts"]) == [4, 2, 1, 2, 3]


def test_polygon_of_a_square():
    m = np.zeros((50, 50), bool)
    m[10:20, 5:35] = True
    poly = mask_to_polygon(m)
    assert poly[:, 0].min() == 5 and poly[:, 0].max() == 34 and poly[:, 1].min() == 10 and poly[:, 1].max() == 19
    assert len(mask_to_polygon(np.zeros((5, 5), bool))) == 0


def test_mask_to_original_undoes_the_letterbox():
    t = letterbox_transform((200, 400), (100, 100))  # scale 0.25, pad_y 25
    m = np.zeros((100, 100), bool)
    m[25 + 10:25 + 20, 40:60] = True  # original rows 40..80, cols 160..240
    full = mask_to_original(m, t)
    assert full.shape == (200, 400)
    ys, xs = np.nonzero(full)
    assert (ys.min(), ys.max() + 1, xs.min(), xs.max() + 1) == (40, 80, 160, 240)
