"""Command line of avbench.eval: evaluate | score | filter | leaderboard | align (see `python -m eval CMD --help`)."""
from __future__ import annotations

import argparse
import sys

from .calibration import DEFAULT_METHOD, DEFAULT_PRIOR, METHODS, check_prior

RATINGS_HELP = """ratings CSV formats (header row required):
  absolute ratings (MOS):  path,rating            -> SRCC, PLCC, Kendall tau with bootstrap 95% CIs
  A/B preferences:         path_a,path_b,preferred (preferred = a | b; tie rows are skipped)
                                                  -> pairwise agreement with bootstrap 95% CI
paths are matched to the scores exactly, then by absolute path, then by unique file name."""


def _resume_args(parser: argparse.ArgumentParser, where: str) -> None:
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--resume", action="store_true",
                   help=f"skip the videos whose records are already in {where} (the default)")
    g.add_argument("--overwrite", action="store_true",
                   help=f"start over: empty {where}'s records instead of resuming")


def _backend_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="local: worker processes here; ray: one scorer actor per CPU (per GPU with --device "
                             "cuda) of a Ray cluster, inputs from folders or URL prefixes (s3://...), records in "
                             "resumable JSONL shards beside a manifest (docs/scale_out.md; pip install -e .[ray])")
    parser.add_argument("--ray-address", default=None, help="Ray cluster (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--shard-records", type=int, default=1000, metavar="N",
                        help="--backend ray: records per output shard (a shard is also written after a minute); "
                             "a killed job loses at most the shard being filled")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m eval", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    e = sub.add_parser("evaluate", help="score val/test, calibrate on val, report on test, export",
                       description="Score the val and test shards with a trained judge, fit the "
                       "temperature / Platt / isotonic calibrators on val only (at --prior), write "
                       "REPORT/report.md + report.json + plots, and export the calibrated judge.")
    e.add_argument("--dim", required=True)
    e.add_argument("--shards", required=True, help="folder or fsspec URL (s3://...) with <split>-%%06d.tar and "
                   "card.json, or feature shards (python -m train.data featurize)")
    e.add_argument("--run", required=True, help="training run folder (model/ + metrics.json)")
    e.add_argument("--export", required=True, help="export folder to write")
    e.add_argument("--report", required=True, help="report folder to write")
    e.add_argument("--calibration", default=DEFAULT_METHOD, choices=METHODS,
                   help=f"calibration exported (all three are reported; default {DEFAULT_METHOD}: the parametric "
                        "map that can place its 0.5 point, which temperature scaling cannot move)")
    e.add_argument("--prior", type=_prior, default=DEFAULT_PRIOR, metavar="P",
                   help="P(yes) the calibration is fitted for (default 0.5: a score of 0.5 means yes and no "
                        "are equally likely, e.g. in sync and not). The val clips are weighted to it and the "
                        "test numbers computed at it; recorded in calibration.json, report.json and the model card")
    e.add_argument("--cache-dir", default=None, help="preprocessing cache (train.data.load_split)")
    e.add_argument("--batch-size", type=int, default=16)
    e.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for 95%% CIs")
    e.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (a judge with encoders of its own); repeatable")
    e.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    e.add_argument("--workers", type=int, default=None,
                   help="decoding workers when the preprocessing cache is built (train.data default)")
    e.add_argument("--whole-clips", action="store_true",
                   help="score each pair clip whole, as `score` scores a video (the judge's windows, one clip "
                        "decision): for shards whose clips are longer than the judge's window; calibration is "
                        "then fitted on clip logits, the ones `score` calibrates. Default: each clip cut or "
                        "padded to one window, through the tensor cache")
    e.add_argument("--no-progress", action="store_true")
    e.add_argument("--max-bad-fraction", type=float, default=None,
                   help="broken samples (bad json, a side missing, unreadable mp4) are left out and listed in "
                        "REPORT/bad_samples.jsonl; stop when more than this share of a split is bad "
                        "(default 0.05; 1 = never stop)")

    s = sub.add_parser("score", help="score videos with one or more exported judges",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Print one JSON line per video: {\"path\", \"scores\": {dim: p}} "
                       "plus \"windows\": {dim: [{start, end, score}]} for videos longer than one "
                       "window (or always with --windows). A file that cannot be read gives a line "
                       "with \"error\" and the batch goes on; the exit status is 1 only when every "
                       "video failed (130 / 143 when stopped by SIGINT / SIGTERM: the records written to --out "
                       "are kept, and the same command resumes).")
    s.add_argument("--scorer", action="append", required=True, metavar="DIR",
                   help="export folder (repeat for several dimensions)")
    s.add_argument("videos", nargs="+", metavar="VIDEO",
                   help="video files; with --backend ray also folders and URLs (s3://bucket/videos/)")
    s.add_argument("--out", default=None,
                   help="also write the results to a .jsonl or .csv file, each record as its file finishes "
                        "(OUT.settings.json beside it names the judges); a run stopped by Ctrl-C / SIGTERM / a "
                        "kill keeps the records written, and the same command resumes: the videos already in "
                        "OUT are skipped. Records of other judges or other settings are never mixed in: "
                        "the run stops with one line")
    _resume_args(s, "--out")
    s.add_argument("--windows", action="store_true", help="per-window scores for every video")
    s.add_argument("--max-faces", type=int, default=None, metavar="N",
                   help="faces tracked per window (default 4); the clip's score is the speaking face's, "
                        "each face's is in the record's \"faces\" (1: one face, as the judges were trained)")
    s.add_argument("--batch-size", type=int, default=8,
                   help="windows per judge batch (with --device cuda, windows of several files: e.g. 256)")
    s.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (a judge with encoders of its own); repeatable")
    s.add_argument("--device", default=None)
    s.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes scoring files in parallel (default: one per CPU core; with --device cuda they decode "
                        "and find faces, the judge batches the windows of several files on the GPU); "
                        "with --backend ray: scorer actors (default: one per CPU, or GPU, of the cluster)")
    _backend_args(s)

    f = sub.add_parser("filter", help="keep the videos whose scores reach a threshold",
                       description="Score videos (files or folders, searched recursively) and write "
                       "OUT_DIR/kept.txt and OUT_DIR/rejected.txt: tab-separated path then dim=score "
                       "(unreadable files are rejected with error=...).")
    f.add_argument("--scorer", action="append", required=True, metavar="DIR")
    f.add_argument("--min", action="append", default=None, metavar="P|DIM=P",
                   help="keep when score >= P on every dimension; DIM=P per dimension. Default 0.5: for a "
                        "judge calibrated at the 50/50 prior (calibration.json \"prior\"), the point where yes "
                        "and no are equally likely")
    f.add_argument("--keep-status", action="append", default=[], metavar="STATUS[,STATUS]",
                   help="also keep files the judge cannot judge properly when their score passes: "
                        "no_face, too_short, no_audio (default: only status ok is kept)")
    f.add_argument("src", nargs="+", metavar="SRC", help="video files or folders; with --backend ray also URLs")
    f.add_argument("--out-dir", default=".", help="where kept.txt and rejected.txt go (default .), a line "
                   "as each file finishes; the same command resumes a stopped run, skipping the videos already "
                   "listed (another --min / --keep-status splits those again without scoring them)")
    _resume_args(f, "--out-dir")
    f.add_argument("--batch-size", type=int, default=8)
    f.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                   help="import MODULE first (a judge with encoders of its own); repeatable")
    f.add_argument("--device", default=None)
    f.add_argument("--workers", type=int, default=0, metavar="N",
                   help="processes scoring files in parallel (default: one per CPU core; with --device cuda they decode "
                        "and find faces, the judge batches the windows of several files on the GPU); "
                        "with --backend ray: scorer actors (default: one per CPU, or GPU, of the cluster)")
    f.add_argument("--kept-to", default=None, metavar="DIR|URL",
                   help="also copy the kept videos there, each under its path relative to its SRC (a re-run "
                        "with another --min removes the copies no longer kept)")
    _backend_args(f)

    from .leaderboard import add_parser as add_leaderboard

    add_leaderboard(sub)

    a = sub.add_parser("align", help="agreement of scores with human ratings",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Correlate `score` output with human ratings.", epilog=RATINGS_HELP)
    a.add_argument("--scores", required=True, help="scores.jsonl (or .csv) written by `score --out`")
    a.add_argument("--ratings", required=True, help="ratings CSV (formats below)")
    a.add_argument("--dim", default=None, help="dimension to use when the scores hold several")
    a.add_argument("--n-boot", type=int, default=1000)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--out", default=None, help="also write the result JSON here")
    return p


def _prior(text: str) -> float:
    try:
        return check_prior(float(text))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _device(d: str | None) -> str:
    if d:
        return d
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd != "align":
        from .cli import quiet_transformers

        quiet_transformers()
    if getattr(args, "plugin", None):
        from train.encoders import import_plugins

        import_plugins(args.plugin)
    if args.cmd == "evaluate":
        from perturb.shard_format import ShardFormatError
        from train.data import ShardReadError, TooManyBadSamples
        from train.model import JudgeLoadError

        from .evaluate import evaluate

        try:
            evaluate(args.dim, args.shards, args.run, args.export, args.report,
                     calibration=args.calibration, cache_dir=args.cache_dir, batch_size=args.batch_size,
                     n_boot=args.n_boot, device=_device(args.device), progress=not args.no_progress,
                     workers=args.workers, max_bad_fraction=args.max_bad_fraction, whole_clips=args.whole_clips,
                     prior=args.prior)
        except ShardReadError as err:  # a location or file that cannot be read as given
            print(f"error: {err}", file=sys.stderr)
            return 2
        except ShardFormatError as err:  # an invalid or hostile shard: one line, nothing decoded
            print(f"error: invalid shard: {err}", file=sys.stderr)
            return 2
        except JudgeLoadError as err:  # e.g. pickled weights only: refused, nothing unpickled
            print(f"error: {err}", file=sys.stderr)
            return 2
        except TooManyBadSamples as err:
            print(f"error: too many bad samples: {err} (all listed in {args.report}/bad_samples.jsonl; "
                  f"--max-bad-fraction sets the limit)", file=sys.stderr)
            return 2
        print(f"[eval] report: {args.report}/report.md; export: {args.export}", file=sys.stderr)
        return 0
    if args.cmd in ("score", "filter"):
        from . import cli

        args.device = _device(args.device)
        if args.backend == "ray":  # scorer actors on a Ray cluster (eval/scale.py)
            from . import scale

            return cli._until_stopped(scale.cmd_score_ray if args.cmd == "score" else scale.cmd_filter_ray, args)
        code = cli.cmd_score(args) if args.cmd == "score" else cli.cmd_filter(args)
        if code == 0 and getattr(args, "kept_to", None):
            from .scale import publish_kept_line

            print(publish_kept_line(args), file=sys.stderr)
        return code
    if args.cmd == "leaderboard":
        from .leaderboard import cmd_leaderboard

        args.device = _device(args.device)
        return cmd_leaderboard(args)
    if args.cmd == "align":
        from .cli import cmd_align

        return cmd_align(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
