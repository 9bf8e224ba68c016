"""Command line: `python -m perturb build --dim lip_sync (--src DIR | --demo) [--out shards ...]`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perturb", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build preference-pair shards for one dimension")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--src", help="folder of real videos (searched recursively)")
    src.add_argument("--demo", action="store_true", help="generate and use the embedded demo corpus")
    b.add_argument("--dim", default="lip_sync", help="dimension (names the output folder and the default recipe)")
    b.add_argument("--recipe", help="recipe name or YAML path (default: the dimension's recipe)")
    b.add_argument("--out", default="shards", help="output root, a folder or an fsspec URL (s3://bucket/shards; "
                   "file:///abs/path is that folder): shards go to OUT/<dim>/<split>-%%06d.tar; one build at a "
                   "time per OUT/<dim> (OUT/<dim>/.build.lock)")
    b.add_argument("--workers", type=int, default=2, help="local processes (one source per task; local backend)")
    b.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: a process pool here; ray: Ray Data tasks on a Ray cluster (pip install -e .[ray])")
    b.add_argument("--ray-address", default=None, help="Ray cluster to use (default: RAY_ADDRESS, else a local Ray)")
    b.add_argument("--work", default=None, help="with a URL --out: local folder for staging and the canonical "
                   "cache (default cache/build/<url>); keep it to resume")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--window", type=float, help="window length in seconds (default: the recipe's)")
    b.add_argument("--hop", type=float, help="seconds between window starts (default: window, no overlap)")
    b.add_argument("--pairs-per-window", type=int, help="pairs per window (default: the recipe's)")
    b.add_argument("--splits", help="train,val,test fractions, e.g. 0.6,0.2,0.2 (default: the recipe's)")
    b.add_argument("--max-windows", type=int, default=0, help="cap windows per source (0 = all)")
    b.add_argument("--max-side", type=int, default=512, help="canonical longest side in pixels")
    b.add_argument("--donors", help="folder of speech recordings used as donor voices (voice_swap)")
    b.add_argument("--manifest", help="JSON/CSV manifest with licence / group per file")
    b.add_argument("--train-extra", help="folder of more sources for the train split only (val / test pairs unchanged)")
    b.add_argument("--train-voices", action="store_true",
                   help="the --donors files of the train split are also train sources (audio-only recipes)")
    b.add_argument("--train-extra-manifest", help="JSON/CSV manifest of --train-extra: the files to use, licence / group")
    b.add_argument("--cards", default="data_cards", help="folder for data_cards/<dim>.md and .json")
    b.add_argument("--demo-dir", default="demo_corpus", help="where --demo writes its synthetic corpus")
    b.add_argument("--max-count", type=int, default=500, help="pairs per shard at most")
    b.add_argument("--max-mb", type=int, default=512, help="megabytes per shard at most")
    x = sub.add_parser("samples", help="write a few pairs of a split out of the shards as mp4 files")
    x.add_argument("--shards", required=True, help="OUT/<dim> folder of a build")
    x.add_argument("--split", default="test")
    x.add_argument("--n", type=int, default=2, help="pairs to write")
    x.add_argument("--out", required=True, help="folder for <key>.chosen.mp4 / <key>.rejected.mp4")
    args = parser.parse_args(argv)

    if args.cmd == "samples":
        from .pipeline import write_samples
        from .shard_format import ShardFormatError

        try:
            for path in write_samples(args.shards, args.split, args.n, args.out):
                print(path)
        except ShardFormatError as err:
            print(f"error: invalid shard: {err}", file=sys.stderr)
            return 2
        return 0

    from .operators import ConfigError
    from .pipeline import BuildError, ManifestError, build, environment_fault
    from .recipe import parse_splits

    src_dir, donors = args.src, args.donors
    try:
        if args.demo:
            from .demo_corpus import make_demo_corpus

            make_demo_corpus(args.demo_dir)
            src_dir = args.demo_dir
            if donors is None and (Path(args.demo_dir) / "speech").is_dir():
                donors = str(Path(args.demo_dir) / "speech")
        result = build(src_dir, args.dim, out=args.out, seed=args.seed, workers=args.workers,
                       recipe=args.recipe, window_seconds=args.window, max_windows=args.max_windows,
                       hop_seconds=args.hop, pairs_per_window=args.pairs_per_window,
                       splits=parse_splits(args.splits) if args.splits else None,
                       max_side=args.max_side, donors=donors, manifest=args.manifest,
                       train_extra=args.train_extra, train_extra_manifest=args.train_extra_manifest,
                       train_voices=args.train_voices,
                       cards_dir=args.cards, max_count=args.max_count, max_bytes=args.max_mb << 20,
                       backend=args.backend, ray_address=args.ray_address, work_dir=args.work,
                       command=["python", "-m", "perturb", *(argv if argv is not None else sys.argv[1:])])
    except (ConfigError, ManifestError, FileNotFoundError) as err:  # a bad recipe, manifest or path: one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    except BuildError as err:  # the machine, the output, another build: one line, no source rejected for it
        print(f"error: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # e.g. the disk filled while the demo corpus was written
        fault = environment_fault(err)
        if fault is None:
            raise
        print(f"error: {fault}", file=sys.stderr)
        return 1
    card = result["card"]
    print(f"{card['pairs']} pairs in {len(result['shards'])} shards under {result['out_dir']} "
          f"({card['counts_per_split']}){' published to ' + result['out_url'] if 'out_url' in result else ''}; "
          f"{len(result['rejects'])} sources rejected "
          f"(see {result['out_dir'] / 'rejects.jsonl'}); card: {args.cards}/{args.dim}.md")
    for r in result["rejects"]:
        print(f"  skipped {Path(r['path']).name}: {r['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
