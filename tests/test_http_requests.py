"""Roboflow request shapes, the API key and multipart bodies, without a server."""
from __future__ import annotations

import base64
import os
import pickle

import cv2
import numpy as np
import pytest
import requests

from serve_app.errors import InvalidImage, SchemaError, Unauthorized
from serve_app.http.auth import ApiKey
from serve_app.http.parsing import multipart_file, parse_json
from serve_app.http.requests import ModelRequest
from serve_app.http.roboflow import (client_registry, finish_results, from_json_body, from_legacy_query, from_query,
                                     inference_params, percent_or_fraction)
from serve_app.http.visualize import DrawOptions
from serve_app.pipeline.images import ImageLimits, ImageSource, load_source
from serve_app.pipeline.preprocess import PreprocOverrides
from serve_app.tasks.params import InferenceParams

IMAGE = {"type": "base64", "value": "aGVsbG8="}
HELLO = ImageSource("encoded", b"hello")


def test_json_body_fields_are_typed_and_unknown_ones_ignored():
    req = from_json_body({"model_id": "a/1", "image": IMAGE, "confidence": "0.25", "iou_threshold": 0.5,
                          "class_agnostic_nms": "true", "class_filter": ["x"], "max_detections": 10.0,
                          "max_candidates": 100, "keypoint_confidence": 0.1, "disable_preproc_auto_orient": "false",
                          "response_mask_format": "rle", "visualize_predictions": True, "visualization_labels": False,
                          "visualization_stroke_width": 3, "id": "req-1", "api_key": "k", "fix_batch_size": True,
                          "disable_active_learning": False, "source": "sdk"}, max_images=8)
    assert req.model_ref == "a/1" and req.images == (HELLO,) and not req.batched and req.inference_id == "req-1"
    assert req.params == InferenceParams(confidence=0.25, iou_threshold=0.5, class_agnostic_nms=True, class_filter=("x",),
                                         max_detections=10, max_candidates=100, keypoint_confidence=0.1,
                                         mask_format="rle", overrides=PreprocOverrides())
    assert req.draw == DrawOptions(labels=False, stroke=3)
    assert from_json_body({"image": [IMAGE, IMAGE]}, 8).batched
    assert from_json_body({"image": IMAGE, "visualize_predictions": False}, 8).draw is None


@pytest.mark.parametrize("field,value", [
    ("confidence", "abc"), ("confidence", 7), ("confidence", -0.1), ("confidence", True), ("confidence", [0.5]),
    ("iou_threshold", 1.5), ("class_agnostic_nms", "maybe"), ("class_filter", "circle"), ("class_filter", [1]),
    ("max_detections", 0), ("max_detections", 2.5), ("max_candidates", 10**9), ("keypoint_confidence", 3),
    ("disable_preproc_auto_orient", "x"), ("disable_preproc_contrast", 2), ("disable_preproc_grayscale", "yes"),
    ("disable_preproc_static_crop", []), ("response_mask_format", "bitmap"), ("visualize_predictions", "x"),
    ("visualization_labels", 3), ("visualization_stroke_width", 0), ("visualization_stroke_width", 1.5),
    ("visualization_stroke_width", "wide"), ("id", 5), ("model_id", 5),
])
def test_each_json_field_is_validated_by_name(field, value):
    with pytest.raises(SchemaError) as info:
        from_json_body({"model_id": "a/1", "image": IMAGE, field: value}, 8)
    assert field in info.value.message


@pytest.mark.parametrize("image,error,fragment", [
    (None, SchemaError, "'image' is required"), ([], SchemaError, "empty"), (5, SchemaError, "image must be"),
    ([IMAGE, 5], SchemaError, "image[1]"), ([IMAGE] * 9, SchemaError, "limit is 8"),
    ({"type": "numpy", "value": "gASV"}, InvalidImage, "pickle"),
    ([IMAGE, {"type": "PIL", "value": "x"}], InvalidImage, "pickle"),
])
def test_image_field_structure(image, error, fragment):
    with pytest.raises(error) as info:
        from_json_body({"image": image}, 8)
    assert fragment in info.value.message


def test_confidence_default_and_best_mean_the_server_default():
    assert inference_params({"confidence": "default"}) == InferenceParams() == inference_params({"confidence": "best"})


def test_the_replica_gets_bytes_typed_parameters_and_the_model_key():
    """Parsed once: base64 decoded to bytes, parameters typed; the replica decodes the pixels once."""
    png = cv2.imencode(".png", np.zeros((10, 20, 3), np.uint8))[1].tobytes()
    spec = {"type": "base64", "value": base64.b64encode(png).decode()}
    url = "https://images.example.com/a.jpg"
    req = from_json_body(parse_json(b'{"model_id": "shapes", "confidence": "0.5", "image": [%s, "%s"]}'
                                    % (str(spec).replace("'", '"').encode(), url.encode())), 8)
    sent = req.for_model("shapes-det/1@3f2a")
    assert sent == ModelRequest("shapes-det/1@3f2a", (ImageSource("encoded", png), ImageSource("url", url)),
                                InferenceParams(confidence=0.5))
    assert pickle.loads(pickle.dumps(sent)) == sent and isinstance(sent.images[0].data, bytes)
    assert load_source(sent.images[0], ImageLimits()).shape == (10, 20, 3)
    raw = from_query({"confidence": "0.3"}).with_body(base64.b64encode(png), "text/plain", ImageLimits())
    assert raw.images == (ImageSource("encoded", png),) and raw.params.confidence == 0.3


@pytest.mark.parametrize("value", ["aGVsbG8", "aGVs bG8=", "aGVsbG8=\n", "data:image/png;base64,aGVsbG8=",
                                   "aGVsbG8_"[:-1] + "=", "aGVsbG8="])
def test_base64_variants_decode_alike(value):
    assert from_json_body({"image": {"type": "base64", "value": value}}, 8).images[0].data.startswith(b"hello"[:5])


def test_one_list_error_names_its_image():
    with pytest.raises(InvalidImage, match=r"image\[1\]: .*base64"):
        from_json_body({"image": [IMAGE, {"type": "base64", "value": "!!"}]}, 8)


def test_legacy_query_percentages_and_names():
    req = from_legacy_query({"confidence": "40", "overlap": "30", "max_detections": "5", "format": "image_and_json",
                             "labels": "false", "stroke": "4", "classes": "circle, square", "api_key": "k"},
                            "shapes-det", "1")
    assert req.model_ref == "shapes-det/1" and req.images == () and req.response_format == "image_and_json"
    assert req.params == InferenceParams(confidence=0.4, iou_threshold=0.3, max_detections=5,
                                         class_filter=("circle", "square"))
    assert req.draw == DrawOptions(labels=False, stroke=4)
    assert from_legacy_query({"image": "http://h/x.jpg"}, "a", "1").images == (ImageSource("url", "http://h/x.jpg"),)
    assert from_legacy_query({}, "a", "1").draw is None
    assert percent_or_fraction("1", "confidence") == 0.01 and percent_or_fraction("0.999", "confidence") == 0.999
    assert percent_or_fraction(100, "overlap") == 1.0 and percent_or_fraction("0", "overlap") == 0.0


@pytest.mark.parametrize("query,fragment", [
    ({"confidence": "150"}, "confidence"), ({"confidence": "-1"}, "confidence"), ({"overlap": "abc"}, "overlap"),
    ({"format": "png"}, "format"), ({"stroke": "0"}, "stroke"), ({"labels": "maybe"}, "labels"),
    ({"max_detections": "-1"}, "max_detections"), ({"class_agnostic_nms": "perhaps"}, "class_agnostic_nms"),
])
def test_legacy_query_validation_names_the_parameter(query, fragment):
    with pytest.raises(SchemaError) as info:
        from_legacy_query(query, "a", "1")
    assert fragment in info.value.message


def test_header_route_query():
    req = from_query({"model_id": "a/1", "confidence": "0.3", "visualize_predictions": "true"})
    assert req.model_ref == "a/1" and req.params == InferenceParams(confidence=0.3) and req.draw == DrawOptions()


def test_results_get_ids_times_and_visualizations():
    out = finish_results([{"predictions": []}, {"predictions": []}], inference_id=None, elapsed=0.5,
                         visualizations=[b"ab", b"cd"])
    assert out[0]["inference_id"] != out[1]["inference_id"] and out[0]["time"] == 0.5
    assert out[0]["visualization"] == "YWI=" and list(out[0])[:2] == ["inference_id", "time"]
    assert finish_results([{}], inference_id="mine", elapsed=0)[0]["inference_id"] == "mine"


def test_client_registry_lists_aliases_of_loaded_models():
    view = {"models": [{"model_id": "det/1", "task_type": "object-detection"}],
            "available": [], "aliases": {"shapes": "det/1", "chain": "shapes", "cold": "other/1"}}
    ids = {m["model_id"]: m.get("alias_of") for m in client_registry(view)["models"]}
    assert ids == {"det/1": None, "shapes": "det/1", "chain": "det/1"}


def test_api_key_channels_and_no_echo():
    key = ApiKey("s3cret-ü")
    key.check(bearer="Bearer s3cret-ü")
    key.check(query="s3cret-ü")
    key.check(body="s3cret-ü")
    for kwargs in ({}, {"body": None}, {"query": ""}, {"bearer": "Bearer wrong-value"}, {"query": "wrong-value"},
                   {"body": "wrong-value"}, {"bearer": "Basic czNjcmV0"},
                   {"bearer": "Bearer wrong-value", "query": "s3cret-ü"}):
        with pytest.raises(Unauthorized) as info:
            key.check(**kwargs)
        assert "wrong-value" not in info.value.message and "s3cret" not in info.value.message
    ApiKey(None).check(query="anything")
    assert not ApiKey(None).enabled and not ApiKey("").enabled


def test_multipart_file_with_binary_content():
    data = os.urandom(3000) + b"\r\n--boundary\r\n" + os.urandom(50)
    prepared = requests.Request("POST", "http://x/", files={"file": ("a.jpg", data, "image/jpeg")},
                                data={"other": "1"}).prepare()
    assert multipart_file(prepared.body, prepared.headers["Content-Type"]) == (data, "image/jpeg")
    renamed = requests.Request("POST", "http://x/", files={"upload": ("a.png", b"png", "image/png")}).prepare()
    assert multipart_file(renamed.body, renamed.headers["Content-Type"]) == (b"png", "image/png")
    with pytest.raises(SchemaError, match="'file'"):
        form = requests.Request("POST", "http://x/", files={"x": (None, "text")}).prepare()
        multipart_file(form.body, form.headers["Content-Type"])
    with pytest.raises(SchemaError, match="boundary"):
        multipart_file(b"junk", "multipart/form-data")
