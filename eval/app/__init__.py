"""A small local web app to see pairs, score videos and collect blind A/B ratings
(`python -m eval.app`, `make app`; docs/app.md).

    from eval.app import App, Server
    server = Server(App(shards=["shards/lip_sync"]), port=0)   # 127.0.0.1, a free port
    print(server.url); server.serve_forever()
"""
from __future__ import annotations

from .server import App, AppError, Server

__all__ = ["App", "AppError", "Server"]
