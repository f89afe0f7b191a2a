"""``serve-app``: the command line (a console script installed with the package).

    serve-app infer IMAGE... --model ID [--url URL] [--json | --annotate OUT]
    serve-app models list | add MANIFEST | add ID --weights-uri URI | load ID | remove ID
    serve-app serve [CONFIG] [-- SERVE_RUN_ARGS...]
    serve-app bench --model ID [--clients N...] [--duration S]

Exit status: 0 done; 1 the server refused (its message is printed) or could not be reached; 2 the
command was used wrongly (argparse's convention), 130 interrupted. ``--url``, ``--api-key`` and
``--admin-key`` default to ``SERVE_APP_URL``, ``SERVE_APP_API_KEY`` and ``SERVE_APP_ADMIN_KEY``.
Only ``serve`` (which becomes Ray Serve's ``serve run``) touches Ray; the rest speak HTTP.
"""
from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from serve_app import __version__
from serve_app.cli import commands
from serve_app.cli.client import DEFAULT_URL, ENV_ADMIN_KEY, ENV_API_KEY, ENV_URL, CliError

PROG = "serve-app"


def connection_options() -> argparse.ArgumentParser:
    """The options every command that talks to a server takes (a parent parser)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("server")
    group.add_argument("--url", help=f"the server's base URL (default: ${ENV_URL} or {DEFAULT_URL})")
    group.add_argument("--api-key", help=f"the server's API key (default: ${ENV_API_KEY})")
    group.add_argument("--admin-key", help=f"the server's admin key, for models add/load/remove (default: ${ENV_ADMIN_KEY})")
    group.add_argument("--timeout", type=positive, default=60.0, metavar="S",
                       help="seconds to wait for each answer (default: 60; a model's first load takes a while)")
    return parent


def positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value


def count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of 1 or more, got {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    server = connection_options()
    parser = argparse.ArgumentParser(prog=PROG, description="Run, query and measure the serve_app model server.",
                                     epilog="exit status: 0 done, 1 server error or unreachable, 2 usage error")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("infer", parents=[server], help="run a model on images",
                       description="Send each image to POST /infer and print the predictions.")
    p.add_argument("images", nargs="+", metavar="IMAGE", help="image files (JPEG, PNG, ...; '-' reads standard input)")
    p.add_argument("--model", "-m", required=True, metavar="ID", help="model id or alias, e.g. shapes-det/1")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the server's JSON answer (a list for several images)")
    out.add_argument("--annotate", metavar="OUT",
                     help="write the predictions drawn on the image as a JPEG: a file for one image, else a folder")
    p.add_argument("--confidence", type=float, metavar="C", help="confidence threshold, 0..1")
    p.add_argument("--iou", type=float, metavar="T", help="NMS IoU threshold, 0..1")
    p.set_defaults(run=commands.infer)

    models = sub.add_parser("models", help="list, add, load and remove models",
                            description="The server's model registry (add, load and remove need the admin key "
                                        "when the server has one).")
    msub = models.add_subparsers(dest="action", metavar="ACTION")
    m = msub.add_parser("list", parents=[server], help="the models the server knows, and where they are loaded")
    m.add_argument("--json", action="store_true", help="print GET /model/registry's JSON")
    m.set_defaults(run=commands.models_list)
    m = msub.add_parser("add", parents=[server], help="add a model from a manifest file or an ONNX file's URI",
                        description="Add a model: MANIFEST is a model.json whose files name a 'uri' the server may "
                                    "fetch ('-' reads standard input); with --weights-uri, SOURCE is the new model id "
                                    "and the URI an Ultralytics-exported ONNX file.")
    m.add_argument("source", metavar="MANIFEST|ID")
    m.add_argument("--weights-uri", metavar="URI", help="https://, http://, s3:// or gs:// URI of the ONNX weights")
    m.add_argument("--replace", action="store_true", help="replace a model of the same id")
    m.add_argument("--no-load", action="store_true", help="only register it; it loads on its first request")
    m.set_defaults(run=commands.models_add)
    m = msub.add_parser("load", parents=[server], help="load a known model onto a replica now")
    m.add_argument("model_id", metavar="ID")
    m.set_defaults(run=commands.models_load)
    m = msub.add_parser("remove", parents=[server], help="take a model out of the registry (and memory)")
    m.add_argument("model_id", metavar="ID")
    m.set_defaults(run=commands.models_remove)
    models.set_defaults(run=None, parser=models)

    p = sub.add_parser("serve", help="start the server (Ray Serve's 'serve run' with the bundled config)",
                       description="Replace this process with 'serve run CONFIG'. Arguments after '--' go to "
                                   "'serve run' (e.g. serve-app serve -- --address auto).")
    p.add_argument("config", nargs="?", metavar="CONFIG",
                   help=f"a Serve config file (default: the checkout's {commands.CONFIG_NAME}, else ./{commands.CONFIG_NAME})")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.set_defaults(run=commands.serve, serve_args=[])

    p = sub.add_parser("bench", parents=[server], help="a short benchmark of one model, with a summary table",
                       description="N clients from one instant for D seconds per level, closed loop; only "
                                   "answers completed inside the window count.")
    p.add_argument("--model", "-m", required=True, metavar="ID", help="model id or alias")
    p.add_argument("--clients", "-c", type=count, nargs="+", default=[4], metavar="N",
                   help="client counts, one level each (default: 4)")
    p.add_argument("--duration", "-d", type=positive, default=10.0, metavar="S", help="seconds per level (default: 10)")
    p.add_argument("--image", metavar="FILE", help="the image to send (default: a drawn 640x480 scene of shapes)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--no-warmup", action="store_true", help="skip the warm-up request (a first load then counts)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(run=commands.bench)
    parser.set_defaults(run=None, parser=parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse, run, and turn every failure into a message on stderr and an exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    passthrough: list[str] = []
    if argv[:1] == ["serve"] and "--" in argv:  # 'serve' passes what follows on to 'serve run'
        cut = argv.index("--")
        argv, passthrough = argv[:cut], argv[cut + 1:]
    args = parser.parse_args(argv)
    run: Callable[[argparse.Namespace], int] | None = args.run
    if run is None:  # 'serve-app' or 'serve-app models' alone
        args.parser.print_help(sys.stderr)
        return 2
    args.serve_args = passthrough
    try:
        return run(args)
    except CliError as exc:
        print(f"{PROG}: error: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # 'serve-app models list | head'
        return 0
