"""`python -m eval.app`: the local web app (pairs, score a video, rate), printing its address.

    python -m eval.app [--shards DIR_OR_URL ...] [--scorer EXPORT ...] [--videos DIR] \
        [--ratings ratings.csv] [--split test] [--host 127.0.0.1] [--port 8600] [--max-upload-mb 200]
"""
from __future__ import annotations

import argparse
import sys

from .server import DEFAULT_MAX_UPLOAD_MB, SPLITS


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m eval.app", description="A local web app: see and hear pairs (--shards), score videos "
        "(--scorer, --videos, uploads) and collect blind A/B ratings into --ratings, which `python -m eval "
        "align` reads. Serves 127.0.0.1 only unless --host says otherwise.")
    p.add_argument("--shards", action="append", default=[], metavar="DIR|URL",
                   help="pair shards of a build (a folder or fsspec URL), read with training's checks; repeatable")
    p.add_argument("--split", default="test", choices=SPLITS, help="split shown first (default test)")
    p.add_argument("--scorer", action="append", default=[], metavar="EXPORT",
                   help="an exported judge (or a packaged judge's name) whose scores the pages show; repeatable")
    p.add_argument("--videos", default=None, metavar="DIR",
                   help="folder whose videos the score page lists (nothing outside it is served)")
    p.add_argument("--ratings", default="ratings.csv", metavar="CSV",
                   help="A/B ratings file the rate page appends to, and resumes from (default ratings.csv)")
    p.add_argument("--media", default=None, metavar="DIR",
                   help="where the pair sides are written as <key>.chosen.mp4 / <key>.rejected.mp4, to score "
                        "them with `python -m eval score` (default: a temp folder, removed at exit)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to serve on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8600, help="port (default 8600; 0: any free port)")
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_MAX_UPLOAD_MB,
                   help=f"largest upload accepted, in MB (default {DEFAULT_MAX_UPLOAD_MB})")
    p.add_argument("--device", default="cpu", help="torch device of the judges (default cpu)")
    p.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (a judge with encoders of its own); repeatable")
    p.add_argument("--verbose", action="store_true", help="log every request on stderr")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .server import App, AppError, Server

    scorers = []
    if args.scorer:
        from train.encoders import import_plugins

        from ..cli import load_scorers, prior_warnings

        import_plugins(args.plugin)
        scorers = load_scorers(args.scorer, device=args.device)  # one line and exit on a bad export
        for line in prior_warnings(scorers):
            print(line, file=sys.stderr)
    try:
        app = App(shards=args.shards, scorers=scorers, videos=args.videos, ratings=args.ratings, media=args.media,
                  max_upload_bytes=int(args.max_upload_mb * (1 << 20)), split=args.split, verbose=args.verbose)
    except AppError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        server = Server(app, args.host, args.port)
    except OSError as err:
        app.close()
        print(f"error: cannot serve on {args.host}:{args.port}: {err.strerror or err} (another --port?)",
              file=sys.stderr)
        return 2
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        print(f"warning: serving on {args.host}: anyone who can reach this machine can see the videos and "
              f"write ratings", file=sys.stderr)
    print(f"avbench app: {server.url}  (pairs, score, rate; ratings to {app.ratings.path}; Ctrl-C stops)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        app.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
