"""JPEG decoding on the GPU (``gpu_jpeg_decode: true``) through NVIDIA's nvImageCodec.

The card's hardware JPEG engines decode baseline JPEGs (the CUDA decoder takes what they refuse);
the pixels come back to the host as the same ``HxWx3`` BGR ``uint8`` array the CPU decoders give,
so everything after decoding is unchanged. A replica holds a few decoders and lends one to each
decode; a JPEG no GPU backend takes (progressive, unusual sampling, corrupt) returns None, and
the CPU decoders of ``pipeline/images.py`` decide it exactly as without this. Headers, limits,
truncation and EXIF orientation stay with ``images.py``: this only turns checked bytes into pixels.

nvImageCodec is an optional dependency (``pip install 'serve-app[gpu]'``, the CUDA 13 wheel);
:func:`gpu_jpeg_decoder` returns None, with a log line, where it or a GPU is missing.

Measured on an H200 (``benchmarks/gpu_decode.py``, ``results/gpu/gpu_decode_h200.json``): a
640x480 JPEG in 0.39 ms and 0.41 ms of CPU against simplejpeg's 1.47 ms, pixels within one level
of libjpeg-turbo's; but the server under load was slower with it (its decode step 17-19 against
5-9 ms at 128-256 clients), so it is off by default. Settings refuse it beside ``cuda_graph``: a
decode while ONNX Runtime records a graph fails the recording.

>>> # decode = gpu_jpeg_decoder(device_id=0)   # None without nvImageCodec or a GPU
>>> # bgr = decode(jpeg_bytes) if decode else None
"""
from __future__ import annotations

import logging
import queue
from collections.abc import Callable
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

JpegDecoder = Callable[[bytes], "np.ndarray | None"]


class GpuJpegDecoder:
    """``decoder(data)``: the JPEG's BGR pixels on the host, or None for the CPU decoders to decide."""

    def __init__(self, nvimgcodec: Any, device_id: int = 0, decoders: int = 2) -> None:
        self._nv = nvimgcodec
        backends = [nvimgcodec.Backend(nvimgcodec.BackendKind.HW_GPU_ONLY), nvimgcodec.Backend(nvimgcodec.BackendKind.GPU_ONLY)]
        # orientation is applied by images.py for every decoder alike, so not here
        self._params = nvimgcodec.DecodeParams(apply_exif_orientation=False, sample_format=nvimgcodec.SampleFormat.I_BGR)
        self._idle: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(decoders):  # one host thread each: the replica's own threads call in
            self._idle.put(nvimgcodec.Decoder(device_id=device_id, max_num_cpu_threads=1, backends=backends))

    def __call__(self, data: bytes) -> np.ndarray | None:
        decoder = self._idle.get()
        try:
            image = decoder.decode(self._nv.CodeStream(data), params=self._params)
            host = None if image is None else image.cpu()  # waits for the decode, then copies
        except RuntimeError:  # nvImageCodec raises RuntimeError for what its backends cannot parse
            return None
        finally:
            self._idle.put(decoder)
        if host is None:
            return None
        pixels = np.from_dlpack(host)
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            return None
        return pixels


def gpu_jpeg_decoder(device_id: int = 0, decoders: int = 2) -> GpuJpegDecoder | None:
    """A :class:`GpuJpegDecoder` on ``device_id``, or None (logged) without nvImageCodec or a GPU."""
    try:
        from nvidia import nvimgcodec
    except ImportError:
        log.warning("gpu_jpeg_decode: nvImageCodec is not installed (pip install 'serve-app[gpu]'); JPEGs decode on the CPU")
        return None
    try:
        decoder = GpuJpegDecoder(nvimgcodec, device_id, decoders)
    except RuntimeError as exc:  # no CUDA device or runtime here
        log.warning("gpu_jpeg_decode: nvImageCodec cannot start on GPU %d (%s); JPEGs decode on the CPU",
                    device_id, str(exc).splitlines()[0][:200])
        return None
    log.info("gpu_jpeg_decode: JPEGs decode on GPU %d (nvImageCodec %s, %d decoders)", device_id,
             getattr(nvimgcodec, "__version__", "?"), decoders)
    return decoder
