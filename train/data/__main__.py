"""python -m train.data featurize | cache | bench: pair shards -> feature shards, the tensor cache,
and cache vs streaming epoch times (the library is train/data/__init__.py)."""
from __future__ import annotations

import argparse
import json

from ..config import card_for_default_config, load_config, resolve_preprocess
from ..encoders import import_plugins
from ..preprocess import PreprocessConfig
from . import (ShardFormatError, ShardReadError, TooManyBadSamples, benchmark, featurize, load_split)


def _cli(args) -> None:
    """python -m train.data's commands (parsed below)."""
    pre = PreprocessConfig()
    if args.config and args.cmd != "featurize":

        pre = PreprocessConfig.from_dict(load_config("", args.config).get("preprocess") or {})
    if args.cmd == "featurize":  # the preprocessing python -m train will ask for: same config, same fingerprint

        conf = load_config(args.dim, args.config, card_for_default_config(args.dim, args.config, args.shards))
        pre = PreprocessConfig.from_dict(resolve_preprocess(conf, import_plugins([*(conf.get("plugins") or []),
                                                                                   *args.plugin])))
        print(json.dumps(featurize(args.shards, args.out, pre, tuple(args.splits.split(",")), backend=args.backend,
                                   ray_address=args.ray_address, num_workers=args.workers)))
    elif args.cmd == "bench":
        print(json.dumps(benchmark(args.shards, args.split, pre, args.cache_dir, args.epochs, args.workers), indent=2))
    else:
        for sp in args.splits.split(","):
            d = load_split(args.shards, sp, pre, args.cache_dir)
            print(sp, len(d), d.face_sources)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="train.data utilities")
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="cache vs no-cache epoch times")
    b.add_argument("--shards", required=True)
    b.add_argument("--split", default="train")
    b.add_argument("--cache-dir", default="/tmp/avbench_bench_cache")
    b.add_argument("--epochs", type=int, default=2)
    b.add_argument("--workers", type=int, default=None)
    b.add_argument("--config", default=None, help="train/configs/<dim>.yaml for the preprocessing section")
    f = sub.add_parser("featurize", help="pair shards -> feature shards (the cached tensors, safetensors)")
    f.add_argument("--shards", required=True, help="pair shards: folder or URL (s3://..., file://...)")
    f.add_argument("--out", required=True, help="feature shards: folder or URL; give it to python -m train --shards")
    f.add_argument("--splits", default="train,val,test")
    f.add_argument("--backend", choices=("local", "ray"), default="local")
    f.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or a local Ray)")
    f.add_argument("--workers", type=int, default=None, help="local backend: DataLoader workers")
    f.add_argument("--dim", default="lip_sync", help="the dimension whose training config sets the preprocessing")
    f.add_argument("--config", default=None, help="training YAML (default train/configs/<dim>.yaml)")
    f.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="as for python -m train")
    c = sub.add_parser("cache", help="build the tensor cache for splits")
    c.add_argument("--shards", required=True)
    c.add_argument("--splits", default="train,val")
    c.add_argument("--cache-dir", default=None)
    c.add_argument("--config", default=None)
    args = ap.parse_args(argv)
    try:
        _cli(args)
    except ShardReadError as err:  # shards that cannot be used as given: one line, nothing written
        raise SystemExit(f"error: {err}") from None
    except ShardFormatError as err:  # an invalid or hostile pair shard: one line, nothing decoded
        raise SystemExit(f"error: invalid shard: {err}") from None
    except TooManyBadSamples as err:
        raise SystemExit(f"error: too many bad samples: {err}") from None


if __name__ == "__main__":
    main()
