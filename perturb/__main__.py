"""Command line: `python -m perturb build --dim lip_sync (--src DIR [DIR ...] | --demo) [--out shards ...]`,
`python -m perturb samples --shards OUT/DIM --out DIR [--op NAME --severity S --random]`,
`python -m perturb apply --op NAME --severity S in.mp4 out.mp4`."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

TRACEBACK_LINES = 30  # of a plugin's or a worker's traceback, shown above the one-line error

PLUGIN_HELP = ("import MODULE first (it registers operators of its own); repeatable; AVBENCH_PLUGINS=M1,M2 "
               "and a recipe's plugins: [M] do the same")


def _fail(err: BaseException, code: int) -> int:
    """One line on stderr, under the last lines of the traceback the error carries (`details`), if any."""
    details = getattr(err, "details", "")
    if details:
        print("\n".join(details.rstrip().splitlines()[-TRACEBACK_LINES:]), file=sys.stderr)
    print(f"error: {err}", file=sys.stderr)
    return code


def _keywords(pairs: list[str]) -> dict:
    """--param KEY=VALUE (VALUE read as YAML: 200, 0.5, [50, 120], true, text) -> {KEY: value}."""
    import yaml

    from .operators import ConfigError

    keywords = {}
    for pair in pairs:
        key, eq, text = pair.partition("=")
        if not eq or not key.strip():
            raise ConfigError(f"--param {pair!r}: write KEY=VALUE, e.g. --param p=0.5")
        try:
            keywords[key.strip()] = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise ConfigError(f"--param {pair!r}: VALUE is not YAML ({' '.join(str(err).split())})") from None
    return keywords


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m perturb", description=__doc__)
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build preference-pair shards for one dimension")
    src = b.add_mutually_exclusive_group(required=True)
    src.add_argument("--src", nargs="+", action="extend", metavar="DIR",
                     help="folder(s) of real videos (searched recursively; one --manifest covers them all)")
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
    b.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=PLUGIN_HELP)
    x = sub.add_parser("samples", help="write a few pairs of a split out of the shards as mp4 files, one line each")
    x.add_argument("--shards", required=True, help="OUT/<dim> folder of a build")
    x.add_argument("--split", default="test")
    x.add_argument("--n", type=int, default=2, help="pairs to write")
    x.add_argument("--out", required=True, help="folder for <key>.chosen.mp4 / <key>.rejected.mp4")
    x.add_argument("--op", help="only pairs whose rejected side applied operator NAME")
    x.add_argument("--severity", type=int, choices=range(1, 6), help="only pairs of this severity (1..5)")
    x.add_argument("--random", action="store_true", help="draw the pairs at random (default: the first ones)")
    x.add_argument("--seed", type=int, default=None, help="with --random: the same seed draws the same pairs")
    x.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=PLUGIN_HELP)
    a = sub.add_parser("apply", help="perturb one video with one operator, to see (and hear) what it does")
    a.add_argument("input", help="a video with sound; at most 30 s of it (--start / --duration choose the part)")
    a.add_argument("output", help="mp4 to write: the part in canonical form (25 fps, 16 kHz mono), perturbed")
    a.add_argument("--op", required=True, help="operator name (see perturb/operators)")
    a.add_argument("--severity", type=int, choices=range(1, 6), default=3, help="1 (mild) .. 5 (strong); default 3")
    a.add_argument("--seed", type=int, default=0, help="seed of the params drawn (default 0)")
    a.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                   help="operator keyword, VALUE read as YAML (e.g. offset_range_ms=[100,200]); repeatable")
    a.add_argument("--donor", action="append", default=[], metavar="FILE",
                   help="a recording an operator may draw other voices / soundtracks from; repeatable")
    a.add_argument("--start", type=float, default=0.0, help="seconds into the input where the part starts")
    a.add_argument("--duration", type=float, help="seconds of the part (default: to the end)")
    a.add_argument("--max-side", type=int, default=512, help="canonical longest side in pixels")
    a.add_argument("--plugin", action="append", default=[], metavar="MODULE", help=PLUGIN_HELP)
    args = parser.parse_args(argv)

    from . import media
    from .operators import ConfigError, PluginError, import_plugins

    if args.cmd in ("samples", "apply"):
        try:
            import_plugins(args.plugin)
        except PluginError as err:
            return _fail(err, 2)
    if args.cmd == "samples":
        return _samples(args)
    if args.cmd == "apply":
        from .pipeline import apply_operator, describe_ops

        try:
            if args.duration is not None and args.duration <= 0:
                raise ConfigError(f"--duration must be > 0, got {args.duration:g}")
            result = apply_operator(args.input, args.output, args.op, severity=args.severity, seed=args.seed,
                                    keywords=_keywords(args.param), donors=args.donor, start=args.start,
                                    duration=args.duration, max_side=args.max_side)
        except (ConfigError, media.MediaError, FileNotFoundError) as err:
            return _fail(err, 2)
        print(json.dumps(result))
        from .operators import REGISTRY, Transform

        if not args.donor and REGISTRY[args.op].with_context is not Transform.with_context:
            print(f"note: {args.op} may draw material from other recordings; none given (--donor FILE)",
                  file=sys.stderr)
        print(f"{args.output}: {describe_ops([{'name': result['op'], 'params': result['params']}])} severity "
              f"{result['severity']}{' (video stream copied)' if result['video_copied'] else ''}", file=sys.stderr)
        return 0

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
                       backend=args.backend, ray_address=args.ray_address, work_dir=args.work, plugins=args.plugin,
                       command=["python", "-m", "perturb", *(argv if argv is not None else sys.argv[1:])])
    except (ConfigError, ManifestError, FileNotFoundError) as err:  # a bad recipe, manifest or path: one line
        print(f"error: {err}", file=sys.stderr)
        return 2
    except PluginError as err:  # one line; the traceback above it when the module raised
        return _fail(err, 2)
    except BuildError as err:  # the machine, the output, another build, a worker's crash: no source rejected
        return _fail(err, 1)
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


def _samples(args: argparse.Namespace) -> int:
    """perturb samples: write the pairs, print one line per pair (key: ops severity -> files)."""
    from .operators import PLUGIN_HINT, REGISTRY
    from .pipeline import describe_ops, write_samples
    from .shard_format import ShardFormatError

    try:
        pairs = write_samples(args.shards, args.split, args.n, args.out, op=args.op, severity=args.severity,
                              pick_random=args.random, seed=args.seed)
    except ShardFormatError as err:
        print(f"error: invalid shard: {err}", file=sys.stderr)
        return 2
    if not pairs and (args.op or args.severity):
        wanted = " ".join(f"{k} {v}" for k, v in (("--op", args.op), ("--severity", args.severity)) if v)
        hint = (f"; unknown operator {args.op!r} (registered: {', '.join(sorted(REGISTRY))}; {PLUGIN_HINT})"
                if args.op and args.op not in REGISTRY else "")
        print(f"error: no pair of split {args.split} in {args.shards} matches {wanted}{hint}", file=sys.stderr)
        return 1
    for pair in pairs:
        rec = pair["record"]
        graded = (f" (chosen: {describe_ops(rec['chosen_ops'])} severity {rec.get('chosen_severity')})"
                  if rec.get("chosen_ops") else "")
        print(f"{pair['key']}: {describe_ops(rec['ops'])} severity {rec.get('severity')}{graded} -> "
              f"{pair['chosen']} {pair['rejected']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
