"""What each command does: ``infer``, ``models list|add|load|remove`` and ``serve``. Each takes the
parsed arguments, prints what a shell user reads (or JSON with ``--json``) and returns the exit
status; failures are raised as :class:`~serve_app.cli.client.CliError`.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

from serve_app.cli.client import CliError, ServerClient, UsageError, visualization
from serve_app.cli.table import render

PROJECT_ROOT = Path(__file__).resolve().parents[2]  # the source checkout (or site-packages when installed)
CONFIG_NAME = "serve_config.yaml"


def client_of(args: argparse.Namespace) -> ServerClient:
    return ServerClient.from_env(args.url, args.api_key, args.admin_key, args.timeout)


def read_file(path: str, what: str) -> bytes:
    """A local file's bytes (``-``: standard input); one that cannot be read is a usage error."""
    if path == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from None


# -- infer ------------------------------------------------------------------------------------------
def infer(args: argparse.Namespace) -> int:
    """Each image through ``--model``: a summary per image, the server's JSON, or drawn images."""
    client = client_of(args)
    images = [(path, read_file(path, "image")) for path in args.images]  # every file read before any request
    outputs = annotate_paths(args.images, args.annotate) if args.annotate else None
    params = {"confidence": args.confidence, "iou_threshold": args.iou}
    answers = []
    for i, (path, data) in enumerate(images):
        answer = client.infer(data, args.model, annotate=outputs is not None, params=params)
        if outputs is not None:
            outputs[i].write_bytes(visualization(answer))
            answer.pop("visualization", None)
        answers.append(answer)
        if not args.json:
            print("\n".join(describe(path, answer, args.model)))
            if outputs is not None:
                print(f"  drawn: {outputs[i]}")
    if args.json:
        print(json.dumps(answers[0] if len(answers) == 1 else answers, indent=2))
    return 0


def annotate_paths(images: list[str], out: str) -> list[Path]:
    """Where each drawn image goes: ``out`` itself for one image (unless it is a folder), else
    ``out/<image name>.jpg`` in a folder made for them."""
    target = Path(out)
    if len(images) == 1 and not target.is_dir():
        if not target.parent.is_dir():
            raise UsageError(f"--annotate: folder {str(target.parent)!r} does not exist")
        return [target]
    if target.exists() and not target.is_dir():
        raise UsageError(f"--annotate: {out!r} is a file; with several images it must be a folder")
    target.mkdir(parents=True, exist_ok=True)
    names = [Path(p).stem if p != "-" else "stdin" for p in images]
    return [target / (f"{n}.jpg" if names.count(n) == 1 else f"{n}-{i}.jpg") for i, n in enumerate(names)]


def describe(path: str, answer: dict, model: str) -> list[str]:
    """A short human reading of one answer: detections with class, confidence and box; the top class;
    the text read."""
    image = answer.get("image") or {}
    size = f"{image.get('width')}x{image.get('height')}" if image else "?"
    elapsed = f", {answer['time'] * 1e3:.0f} ms" if isinstance(answer.get("time"), (int, float)) else ""
    head = f"{path} ({size}, {model}{elapsed})"
    predictions = answer.get("predictions")
    if isinstance(answer.get("result"), str):  # OCR
        return [f"{head}: text {answer['result']!r}"]
    if "top" in answer:  # single-label classification
        return [f"{head}: {answer['top']} ({answer.get('confidence', 0):.2f})"]
    if isinstance(predictions, dict):  # multi-label classification
        return [f"{head}: {', '.join(answer.get('predicted_classes', [])) or 'no class above the threshold'}"]
    predictions = predictions or []
    lines = [f"{head}: {len(predictions)} prediction{'s' if len(predictions) != 1 else ''}"]
    for p in predictions:
        extra = f", {len(p['keypoints'])} keypoints" if p.get("keypoints") else ""
        extra += f", {len(p['points'])}-point outline" if p.get("points") else ""
        lines.append(f"  {p.get('class', '?'):<12} {p.get('confidence', 0):.2f}  centre ({p.get('x', 0):.0f}, "
                     f"{p.get('y', 0):.0f})  {p.get('width', 0):.0f}x{p.get('height', 0):.0f}{extra}")
    return lines


# -- models -----------------------------------------------------------------------------------------
def models_list(args: argparse.Namespace) -> int:
    view = client_of(args).registry()
    if args.json:
        print(json.dumps(view, indent=2))
        return 0
    rows = []
    for m in view.get("available", []):
        replicas = len(m.get("loaded_on") or [])
        size = f"{m.get('input_width')}x{m.get('input_height')}" if m.get("input_width") else "-"
        rows.append([m["model_id"], m.get("task_type", "-"), m.get("architecture", "-"), size,
                     f"{replicas} replica{'s' if replicas != 1 else ''}" if replicas else "not loaded"])
    print(render(["model", "task", "architecture", "input", "loaded"], rows) if rows else "no models")
    aliases = view.get("aliases") or {}
    if aliases:
        print("aliases: " + ", ".join(f"{a} -> {t}" for a, t in sorted(aliases.items())))
    return 0


def models_add(args: argparse.Namespace) -> int:
    """A manifest file (``{...}`` or ``{"manifest": {...}}``), or ``MODEL_ID --weights-uri URI`` (an
    Ultralytics-exported ONNX file whose metadata says the rest)."""
    if args.weights_uri:
        body: dict[str, Any] = {"model_id": args.source, "weights_uri": args.weights_uri}
    else:
        try:
            manifest = json.loads(read_file(args.source, "manifest"))
        except ValueError as exc:
            raise UsageError(f"manifest {args.source!r} is not JSON: {exc}") from None
        if not isinstance(manifest, dict):
            raise UsageError(f"manifest {args.source!r} must be a JSON object")
        body = manifest if "manifest" in manifest else {"manifest": manifest}
    body.update(replace=args.replace, load=not args.no_load)
    view = client_of(args).add(body)
    model_id = body["model_id"] if args.weights_uri else body["manifest"].get("model_id")
    print(f"added {model_id}" + ("" if args.no_load else f", {loaded_on(view, model_id)}"))
    return 0


def models_load(args: argparse.Namespace) -> int:
    view = client_of(args).add({"model_id": args.model_id})
    print(f"{args.model_id}: {loaded_on(view, args.model_id)}")
    return 0


def models_remove(args: argparse.Namespace) -> int:
    client_of(args).remove(args.model_id)
    print(f"removed {args.model_id}")
    return 0


def loaded_on(view: dict, model_id: str | None) -> str:
    entry = next((m for m in view.get("models", []) if m.get("model_id") == model_id), None)
    replicas = [r.get("replica") for r in (entry or {}).get("loaded_on", [])]
    return f"loaded on {len(replicas)} replica{'s' if len(replicas) != 1 else ''}" if replicas else "not loaded yet"


# -- bench ------------------------------------------------------------------------------------------
def bench(args: argparse.Namespace) -> int:
    """One level per ``--clients`` value, a summary table at the end (or JSON); exit 1 if nothing succeeded."""
    from serve_app.cli.bench import default_image, run_level

    image = read_file(args.image, "image") if args.image else default_image()
    client = client_of(args)
    if not args.no_warmup:
        client.infer(image, args.model)  # the model loads here, outside the window (and a bad id stops us)
    levels = [run_level(client, args.model, image, n, args.duration, progress=not args.no_progress)
              for n in args.clients]
    summaries = [level.summary() for level in levels]
    samples = list(dict.fromkeys(s for level in levels for s in level.error_samples))
    if args.json:
        print(json.dumps({"model": args.model, "url": client.url, "levels": summaries, "error_samples": samples},
                         indent=2))
    else:
        columns = ["clients", "duration_s", "answers", "req_s", "p50_ms", "p95_ms", "p99_ms", "errors"]
        print(f"{args.model} at {client.url}")
        print(render(["clients", "seconds", "answers", "req/s", "p50 ms", "p95 ms", "p99 ms", "errors"],
                     [[s[c] for c in columns] for s in summaries]))
        for sample in samples:
            print(f"error: {sample}")
    if not any(s["answers"] for s in summaries):
        raise CliError(f"no request to {args.model} succeeded" + (f": {samples[0]}" if samples else ""))
    return 0


# -- serve ------------------------------------------------------------------------------------------
def serve(args: argparse.Namespace) -> int:
    """``serve run CONFIG`` in this process's place (Ray Serve's own command, from this environment)."""
    config = find_config(args.config)
    command = [serve_binary(), "run", str(config), *args.serve_args]
    if args.dry_run:
        print(shlex.join(command))
        return 0
    sys.stdout.flush()
    os.execvp(command[0], command)
    return 0  # not reached


def find_config(given: str | None) -> Path:
    """``given``, else the checkout's ``serve_config.yaml``, else the one in the current folder."""
    if given:
        path = Path(given)
        if not path.is_file():
            raise UsageError(f"no config file {given!r}")
        return path.resolve()
    for folder in (PROJECT_ROOT, Path.cwd()):
        if (folder / CONFIG_NAME).is_file():
            return (folder / CONFIG_NAME).resolve()
    raise UsageError(f"no {CONFIG_NAME} in {PROJECT_ROOT} or the current folder; name one: serve-app serve CONFIG")


def serve_binary() -> str:
    """Ray Serve's ``serve`` beside this Python (the virtual environment's), else the one on PATH."""
    beside = Path(sys.executable).parent / "serve"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("serve")
    if found is None:
        raise CliError("Ray Serve's 'serve' command is not installed here (pip install 'ray[serve]')")
    return found
