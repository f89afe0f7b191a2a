"""A batch run as consecutive chunks of at most ``size`` rows, the outputs stacked back in order.

Where a session must not see the batch's own shape (a CUDA graph replays the shape it recorded; a
CUDA session re-plans its kernels for every new shape), the batch goes through in pieces it knows.

>>> import numpy as np
>>> calls = []
>>> def double(x):
...     calls.append(len(x))
...     return [x * 2, x.sum(axis=1)]
>>> out = run_in_chunks(double, np.arange(10).reshape(5, 2), 2)
>>> calls, out[0][:, 0].tolist(), out[1].tolist()
([2, 2, 1], [0, 4, 8, 12, 16], [1, 5, 9, 13, 17])
"""
from __future__ import annotations

from collections.abc import Callable

import numpy as np


def run_in_chunks(run: Callable[[np.ndarray], list[np.ndarray]], tensor: np.ndarray, size: int) -> list[np.ndarray]:
    """``run`` on rows ``[0, size)``, ``[size, 2 size)``, ...; each output concatenated over the chunks."""
    parts = [run(tensor[i:i + size]) for i in range(0, len(tensor), size)]
    return [np.concatenate([p[k] for p in parts]) for k in range(len(parts[0]))]
