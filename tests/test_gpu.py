"""On a GPU: the CUDA provider gives the CPU's answers, batches of every bucket size give each
image's single answer, a Ray replica with a fraction of a GPU serves on it, and one with lazy
bucket sessions builds them when requests overlap.

Skipped, with the reason, where onnxruntime cannot start a CUDA session (no GPU, no CUDA
libraries, the CPU build of onnxruntime): CI has no GPU. On the GPU machine run
``python -m pytest tests/test_gpu.py`` (GPU.md's setup).
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from serve_app.pipeline.session import SessionOptions
from serve_app.registry.manifest import Manifest
from serve_app.serving.batcher import batch_buckets, pad_to_bucket
from serve_app.tasks.params import InferenceParams
from serve_app.tasks.vision_model import VisionModel
from tests.zoo_models import builtin, match, pred_boxes
from zoo.shapes import CLASSES, draw_dominant_shape, draw_scene

MODELS = Path(__file__).resolve().parents[1] / "configs" / "models"
CUDA = ("CUDAExecutionProvider", "CPUExecutionProvider")
PARAMS = InferenceParams(confidence=0.4, iou_threshold=0.5)
BUCKETS = batch_buckets(8, (2, 4))


@lru_cache(maxsize=1)
def cuda_problem() -> str | None:
    """Why a CUDA session cannot run here, or None when it can."""
    try:
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError as exc:
        return str(exc)
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime build has no CUDA provider"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # what every onnxruntime of the last years reads, whatever onnx wrote
    try:
        sess = ort.InferenceSession(model.SerializeToString(), providers=list(CUDA))
    except Exception as exc:  # noqa: BLE001 - any failure means no GPU here
        return f"a CUDA session does not start: {str(exc)[:200]}"
    if sess.get_providers()[0] != "CUDAExecutionProvider":
        return "no CUDA device or libraries: onnxruntime fell back to the CPU"
    return None


pytestmark = pytest.mark.skipif(cuda_problem() is not None, reason=f"no GPU: {cuda_problem()}")


@lru_cache(maxsize=None)
def on_gpu(model_id: str, **options) -> VisionModel:
    manifest = Manifest.from_dict(json.loads((MODELS / model_id / "model.json").read_text()))
    files = {name: (MODELS / model_id / spec.path).read_bytes() for name, spec in manifest.files.items()}
    return VisionModel.load(manifest, files, SessionOptions(providers=CUDA, batch_sizes=BUCKETS, **options))


@pytest.fixture(scope="module")
def scenes():
    rng = np.random.default_rng(424_242)
    return [draw_scene(rng) for _ in range(8)]


@pytest.mark.parametrize("model_id", ["shapes-det/1", "shapes-seg/1", "shapes-pose/1"])
def test_gpu_gives_the_cpu_answers(model_id, scenes):
    gpu, cpu = on_gpu(model_id), builtin(model_id)
    assert gpu.providers[0] == "CUDAExecutionProvider"
    for scene in scenes:
        g = gpu.predict([scene.image], PARAMS)[0]["predictions"]
        c = cpu.predict([scene.image], PARAMS)[0]["predictions"]
        assert len(g) == len(c)
        pairs = match(pred_boxes(c), [p["class"] for p in c], g, min_iou=0.98)
        assert len(pairs) == len(c)
        for i, j in pairs:
            assert abs(c[i]["confidence"] - g[j]["confidence"]) < 0.01


def test_every_batch_bucket_has_its_own_session_and_gives_each_images_answer(scenes):
    model = on_gpu("shapes-det/1")
    assert model.session.batch_sizes == [1, 2, 4, 8]
    singles = [model.predict([s.image], PARAMS)[0]["predictions"] for s in scenes]
    for n in (2, 3, 5, 8):  # 3 and 5 are padded to the 4 and 8 buckets, as the batcher pads them
        tensor, transforms = model.prepare([s.image for s in scenes[:n]], PARAMS)
        outputs = model.run(pad_to_bucket(tensor, BUCKETS))
        batched = model.decode(outputs, transforms, PARAMS, [s.image for s in scenes[:n]])
        for single, got in zip(singles[:n], batched):
            got = got["predictions"]
            assert len(got) == len(single)
            assert len(match(pred_boxes(single), [p["class"] for p in single], got, min_iou=0.99)) == len(single)


def test_the_candidate_filter_on_cuda_answers_as_the_full_output(scenes):
    """On CUDA only the candidate rows leave the session (pipeline/candidates.py); a batch of
    requests at two thresholds gets what the full output gives each of them."""
    from serve_app.pipeline.candidates import CandidateRows

    filtered, full = on_gpu("shapes-det/1"), on_gpu("shapes-det/1", candidate_filter=False)
    assert filtered.candidate_filter and not full.candidate_filter
    images = [s.image for s in scenes]
    low = InferenceParams(confidence=0.1, iou_threshold=0.5)
    tensor, transforms = filtered.prepare(images, PARAMS)
    outputs = filtered.run(tensor, filtered.score_floor(low))  # the batch's lowest threshold
    assert isinstance(outputs[0], CandidateRows) and outputs[0].rows.shape[0] < 8 * 8400
    for k, params in enumerate((PARAMS, low) * 4):
        got = filtered.decode([o[k:k + 1] for o in outputs], transforms[k:k + 1], params, images[k:k + 1])
        got = got[0]["predictions"]
        expected = full.predict([images[k]], params)[0]["predictions"]
        assert len(got) == len(expected) and expected
        assert len(match(pred_boxes(expected), [p["class"] for p in expected], got, min_iou=0.99)) == len(expected)


def test_a_quick_start_on_cuda_gives_the_cpu_answers_before_and_after_tuning(scenes):
    """``quick_start``: the first session runs cuDNN's default algorithms, the tuned one replaces
    it; both give the CPU's detections."""
    manifest = Manifest.from_dict(json.loads((MODELS / "shapes-det/1" / "model.json").read_text()))
    files = {"weights": (MODELS / "shapes-det/1" / "weights.onnx").read_bytes()}
    model = VisionModel.load(manifest, files, SessionOptions(providers=CUDA, batch_sizes=(1, 8), quick_start=True,
                                                             lazy_batch_sessions=True))
    cpu = builtin("shapes-det/1")
    assert model.providers[0] == "CUDAExecutionProvider" and model.tuning_pending
    for tuned in (False, True):
        if tuned:
            assert model.tune_session() and not model.tuning_pending
        for scene in scenes[:4]:
            g = model.predict([scene.image], PARAMS)[0]["predictions"]
            c = cpu.predict([scene.image], PARAMS)[0]["predictions"]
            assert len(g) == len(c)
            assert len(match(pred_boxes(c), [p["class"] for p in c], g, min_iou=0.98)) == len(c)


def test_classification_on_gpu_matches_cpu():
    rng = np.random.default_rng(5)
    gpu, cpu = on_gpu("shapes-cls/1"), builtin("shapes-cls/1")
    for name in CLASSES:
        image = draw_dominant_shape(rng, name).image
        g = gpu.predict([image], InferenceParams())[0]
        c = cpu.predict([image], InferenceParams())[0]
        assert g["top"] == c["top"] and abs(g["confidence"] - c["confidence"]) < 0.01


def gpu_jpeg():
    from serve_app.pipeline.gpu_jpeg import gpu_jpeg_decoder

    decoder = gpu_jpeg_decoder(0)  # the project's [gpu] extra: on a GPU machine it must start
    assert decoder is not None, "nvImageCodec (pip install 'serve-app[gpu]') does not start on this GPU"
    return decoder


def test_gpu_jpeg_decode_gives_the_cpu_decoders_pixels_and_answers(scenes):
    import cv2

    from serve_app.errors import InvalidImage
    from serve_app.pipeline.images import ImageLimits, decode_image_bytes

    decoder, limits, model = gpu_jpeg(), ImageLimits(), on_gpu("shapes-det/1")
    for scene in scenes:
        jpeg = cv2.imencode(".jpg", scene.image, [cv2.IMWRITE_JPEG_QUALITY, 90])[1].tobytes()
        direct = decoder(jpeg)
        assert direct is not None and direct.shape == scene.image.shape  # a baseline JPEG: the GPU took it
        cpu = decode_image_bytes(jpeg, limits)
        gpu = decode_image_bytes(jpeg, limits, jpeg_decoder=decoder)
        assert gpu.shape == cpu.shape and gpu.dtype == np.uint8 and gpu.flags.c_contiguous
        diff = np.abs(gpu.astype(np.int16) - cpu)  # nvJPEG's IDCT and chroma upsampling against libjpeg-turbo's
        assert diff.mean() < 1.0 and np.percentile(diff, 99.9) <= 8, (diff.mean(), diff.max())
        c = model.predict([cpu], PARAMS)[0]["predictions"]
        g = model.predict([gpu], PARAMS)[0]["predictions"]
        assert len(g) == len(c)
        assert len(match(pred_boxes(c), [p["class"] for p in c], g, min_iou=0.97)) == len(c)
    # what the GPU refuses or what is not a whole JPEG keeps the CPU's answer
    jpeg = cv2.imencode(".jpg", scenes[0].image)[1].tobytes()
    with pytest.raises(InvalidImage, match="truncated"):
        decode_image_bytes(jpeg[: len(jpeg) // 2], limits, jpeg_decoder=decoder)
    progressive = cv2.imencode(".jpg", scenes[1].image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    assert decode_image_bytes(progressive, limits, jpeg_decoder=decoder).shape == scenes[1].image.shape
    assert decoder(b"\xff\xd8\xff\xd9") is None


def test_gpu_jpeg_decode_keeps_exif_orientation_to_images_py(scenes):
    import io

    import cv2
    from PIL import Image

    from serve_app.pipeline.images import ImageLimits, decode_image_bytes

    decoder = gpu_jpeg()
    stored = scenes[2].image[:, :500]  # not square: a rotation shows
    rgb = cv2.cvtColor(stored, cv2.COLOR_BGR2RGB)
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(rgb).save(buffer, "JPEG", quality=92, exif=exif)
    data = buffer.getvalue()
    cpu = decode_image_bytes(data, ImageLimits())
    gpu = decode_image_bytes(data, ImageLimits(), jpeg_decoder=decoder)
    assert stored.shape[0] != stored.shape[1]
    assert cpu.shape == gpu.shape == (stored.shape[1], stored.shape[0], 3)  # turned once, not twice
    assert np.abs(gpu.astype(np.int16) - cpu).mean() < 1.0


def test_a_replica_with_half_a_gpu_serves_on_it(ray_serve, tmp_path, scenes):
    import time

    import cv2
    import ray

    from tests.conftest import deploy_app, teardown_app

    if not ray.cluster_resources().get("GPU"):
        pytest.skip("Ray sees no GPU on this node")
    app = deploy_app(ray_serve, tmp_path, {"providers": list(CUDA), "max_batch_size": 4, "gpu_jpeg_decode": True},
                     model_server_extra={"ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.5}})
    try:
        expected = builtin("shapes-det/1").predict([scenes[0].image], InferenceParams())[0]["predictions"]
        for fmt, min_iou in ((".png", 0.98), (".jpg", 0.95)):  # the JPEG decodes on the GPU
            body = cv2.imencode(fmt, scenes[0].image)[1].tobytes()
            r = app.post("/infer", data=body, headers={"serve_multiplexed_model_id": "shapes-det/1"})
            assert r.status_code == 200, r.text
            got = r.json()["predictions"]
            assert len(got) == len(expected), fmt
            assert len(match(pred_boxes(expected), [p["class"] for p in expected], got, min_iou=min_iou)) == len(expected)
        deadline = time.time() + 10  # replicas report what they hold asynchronously
        while True:
            held = [m for m in app.get("/model/registry").json()["models"] if m["model_id"] == "shapes-det/1"]
            if held or time.time() > deadline:
                break
            time.sleep(0.5)
        where = held[0]["loaded_on"][0]
        assert where["providers"][0] == "CUDAExecutionProvider", where
        assert where["memory_bytes"] > 0
    finally:
        teardown_app(app)


def test_a_lazy_replica_builds_its_bucket_session_when_requests_overlap_and_counts_its_memory(ray_serve, tmp_path, scenes):
    """``lazy_batch_sessions``: a model loads with batch 1's session alone; concurrent requests
    make the replica build the batch-8 session in the background, measured and added to the
    model's memory, and every answer (row by row meanwhile, batched after) is the model's own."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    import cv2
    import ray

    from tests.conftest import deploy_app, teardown_app

    if not ray.cluster_resources().get("GPU"):
        pytest.skip("Ray sees no GPU on this node")
    app = deploy_app(ray_serve, tmp_path, {"providers": list(CUDA), "max_batch_size": 8, "lazy_batch_sessions": True},
                     model_server_extra={"ray_actor_options": {"num_cpus": 0.5, "num_gpus": 0.5}})

    def held() -> dict:
        deadline = time.time() + 10  # replicas report what they hold asynchronously
        while True:
            found = [m for m in app.get("/model/registry").json()["models"] if m["model_id"] == "shapes-det/1"]
            if found or time.time() > deadline:
                return found[0]["loaded_on"][0]
            time.sleep(0.5)

    try:
        body = cv2.imencode(".png", scenes[0].image)[1].tobytes()
        expected = builtin("shapes-det/1").predict([scenes[0].image], InferenceParams())[0]["predictions"]

        def ask(_: int) -> list[dict]:
            r = app.post("/infer", data=body, headers={"serve_multiplexed_model_id": "shapes-det/1"})
            assert r.status_code == 200, r.text
            return r.json()["predictions"]

        ask(0)
        first = held()
        assert first["batch_sessions"] == [1] and first["memory_bytes"] > 0, first
        deadline = time.time() + 60
        while True:
            with ThreadPoolExecutor(16) as pool:
                answers = list(pool.map(ask, range(64)))
            for got in answers:
                assert len(match(pred_boxes(expected), [p["class"] for p in expected], got, min_iou=0.98)) == len(expected)
            now = held()
            if now["batch_sessions"] == [1, 8] or time.time() > deadline:
                break
        assert now["batch_sessions"] == [1, 8], now
        assert now["candidate_filter"] is True, now  # on the GPU only the candidate rows leave the session
        assert now["memory_bytes"] > first["memory_bytes"], (first, now)
        # the quick start's session (settings' default) was replaced by the tuned one after the first answer
        assert now["quick_start_pending"] is False, now
    finally:
        teardown_app(app)


def test_replicas_spread_over_two_gpus_share_one_artifact_fetch(ray_serve, tmp_path, scenes):
    """On a machine of two GPUs: one replica per GPU, both preload the same model; its weights
    come from the origin once and reach the second replica through the object store."""
    import time

    import cv2
    import ray

    from tests.conftest import deploy_app, teardown_app

    if ray.cluster_resources().get("GPU", 0) < 2:
        pytest.skip("fewer than two GPUs in this Ray node")
    app = deploy_app(ray_serve, tmp_path, {"providers": list(CUDA), "preload": ["shapes-det/1"]}, replicas=2,
                     model_server_extra={"ray_actor_options": {"num_cpus": 0.25, "num_gpus": 1}})
    try:
        registry = app.actor("serve_app_registry")
        deadline = time.time() + 30
        while True:
            replicas = ray.get(registry.replicas.remote())
            holding = {rid: st for rid, st in replicas.items() if "shapes-det/1" in st.get("models", {})}
            if len(holding) == 2 or time.time() > deadline:
                break
            time.sleep(0.5)
        assert len(holding) == 2, replicas
        assert len({tuple(st["gpu_ids"]) for st in holding.values()}) == 2  # one GPU each
        for st in holding.values():
            assert st["models"]["shapes-det/1"]["providers"][0] == "CUDAExecutionProvider"
        stats = ray.get(app.actor("serve_app_artifact_cache").describe.remote())
        assert stats.get("origin", 0) + stats.get("disk", 0) == 1 and stats.get("object_store", 0) >= 1, stats
        body = cv2.imencode(".png", scenes[1].image)[1].tobytes()
        expected = builtin("shapes-det/1").predict([scenes[1].image], InferenceParams())[0]["predictions"]
        for _ in range(4):
            r = app.post("/infer", data=body, headers={"serve_multiplexed_model_id": "shapes-det/1"})
            assert r.status_code == 200, r.text
            assert len(r.json()["predictions"]) == len(expected)
    finally:
        teardown_app(app)
