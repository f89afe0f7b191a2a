"""The capture gate (pipeline/gpu_gate.py): GPU work runs side by side, a CUDA-graph capture runs alone."""
from __future__ import annotations

import threading
import time

from serve_app.pipeline.gpu_gate import CaptureGate

WAIT = 5.0


def in_thread(fn) -> threading.Thread:
    t = threading.Thread(target=fn, daemon=True)
    t.start()
    return t


def test_shared_users_run_together():
    gate, inside, release = CaptureGate(), threading.Barrier(3, timeout=WAIT), threading.Event()

    def user():
        with gate.shared():
            inside.wait()  # all three inside at once, or the barrier times out
            release.wait(WAIT)

    threads = [in_thread(user) for _ in range(2)]
    with gate.shared():
        inside.wait()
        assert gate.users == 3
    release.set()
    for t in threads:
        t.join(WAIT)
    assert gate.users == 0


def test_a_capture_waits_for_the_users_and_new_users_wait_for_the_capture():
    gate, events = CaptureGate(), []
    user_in, user_go, capture_queued = threading.Event(), threading.Event(), threading.Event()

    def first_user():
        with gate.shared():
            user_in.set()
            user_go.wait(WAIT)
            events.append("first user leaves")

    def capture():
        capture_queued.set()
        with gate.exclusive():
            events.append("capture")
            assert gate.users == 0
            time.sleep(0.05)
            events.append("capture ends")

    def late_user():
        with gate.shared():
            events.append("late user")

    t1 = in_thread(first_user)
    assert user_in.wait(WAIT)
    t2 = in_thread(capture)
    assert capture_queued.wait(WAIT)
    deadline = time.monotonic() + WAIT
    while not gate._waiting and time.monotonic() < deadline:  # the capture is queued behind the user
        time.sleep(0.005)
    t3 = in_thread(late_user)  # arrives while the capture waits: it goes after the capture
    time.sleep(0.05)
    assert events == []  # the capture did not start while a user was inside, nor did the late user
    user_go.set()
    for t in (t1, t2, t3):
        t.join(WAIT)
    assert events == ["first user leaves", "capture", "capture ends", "late user"]
    assert not gate.capturing and gate.users == 0


def test_a_failed_capture_opens_the_gate_again():
    gate = CaptureGate()
    try:
        with gate.exclusive():
            raise RuntimeError("capture failed")
    except RuntimeError:
        pass
    done = threading.Event()
    in_thread(lambda: (gate.shared().__enter__(), done.set()))
    assert done.wait(WAIT) and not gate.capturing
