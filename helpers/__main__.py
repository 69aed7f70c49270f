"""Command line: ``python -m helpers run --profile {smoke,cpu,paper} [--only RUN ...] [--dataset NAME
--data-dir DIR] [--test-dataset NAME --test-data-dir DIR] [--split-file FILE] [--scheduler tcp://HOST:PORT |
--cluster local]``;
``python -m helpers data {list,download,verify} NAME --to DIR``;
``python -m helpers weights {list,download} [BACKBONE ...]`` (ImageNet weights in Keras' cache)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from helpers.runner import RunOutcome


def build_parser() -> argparse.ArgumentParser:
    """The command line's parser: ``run``, ``refresh-notebooks``, ``data`` and ``weights``."""
    parser = argparse.ArgumentParser(prog="python -m helpers", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the study plan (notebooks/study.yaml) with papermill")
    run.add_argument("--profile", default="cpu", help="smoke, cpu (default) or paper")
    run.add_argument("--only", nargs="+", metavar="RUN", help="run only these runs of the plan")
    run.add_argument("--dataset", help="dataset registry name, e.g. synthetic or cbis-sample; several joined "
                                        "by '+' are pooled (mias+inbreast)")
    run.add_argument("--data-dir", action="append", metavar="DIR|NAME=DIR",
                     help="folder of the dataset on disk; for a pooled dataset one NAME=DIR per dataset "
                          "(--data-dir mias=DIR1 --data-dir inbreast=DIR2)")
    run.add_argument("--test-dataset", metavar="NAME",
                     help="an external test set: train and validate on --dataset, test on this dataset")
    run.add_argument("--test-data-dir", action="append", metavar="DIR|NAME=DIR", help="folder of the test dataset")
    run.add_argument("--split-file", metavar="FILE",
                     help='your own patient assignment, JSON {"train": [...], "val": [...], "test": [...]} '
                          "(with --test-dataset: train and val only)")
    run.add_argument("--suite", default="study",
                     help="which set of runs of the plan: study (default) or e.g. real-data")
    run.add_argument("--skip-bad", action="store_true",
                     help="leave unreadable or unlabelled files out (listed in the report) instead of failing")
    run.add_argument("--force", action="store_true", help="rerun runs whose inputs have not changed")
    run.add_argument("--jobs", type=int, metavar="N",
                     help="notebooks run at once (default: the profile's jobs: 2 for smoke and cpu, 1 for paper; "
                          "on Dask: the workers' threads; --cluster local starts N workers)")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT",
                       help="run each notebook as a task on this Dask scheduler's workers (they share this "
                            "machine's files; the profile's resources, e.g. GPU=1, go with each task)")
    where.add_argument("--cluster", choices=("local",),
                       help="local: start a Dask LocalCluster here (--jobs workers; one per GPU where there are GPUs)")
    run.add_argument("--dry-run", action="store_true", help="list the planned runs and their parameters")
    run.add_argument("--plan", metavar="FILE", help="the study plan (default: notebooks/study.yaml)")
    refresh = commands.add_parser("refresh-notebooks", help="re-execute the committed notebooks (smoke) to refresh their stored outputs")
    refresh.add_argument("notebooks", nargs="*", help="notebook files (default: all in notebooks/)")
    data = commands.add_parser("data", help="download or verify a dataset (list: which ones and where from)")
    data.add_argument("action", choices=("download", "verify", "list"))
    data.add_argument("name", nargs="?", help="dataset: mias, breakhis, cbis-ddsm, inbreast, mini-ddsm")
    data.add_argument("--to", help="dataset folder (created if needed)")
    data.add_argument("--sha256", help="pin the archive's SHA-256 (download)")
    data.add_argument("--url", help="download from this address instead (a mirror)")
    data.add_argument("--no-progress", action="store_true", help="no progress bar")
    weights = commands.add_parser("weights", help="ImageNet weights in Keras' cache: which are there, or download them")
    weights.add_argument("action", choices=("list", "download"))
    weights.add_argument("backbones", nargs="*", metavar="BACKBONE", help="registry names (default: all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return _dispatch(args)
    except (KeyError, ValueError) as error:  # unknown profile or run, unreadable plan
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from helpers import plan, runner

        if args.dry_run:
            the_plan = plan.load_plan(args.plan)
            for item in plan.planned_runs(args.profile, only=args.only, suite=args.suite,
                                          skip_bad=args.skip_bad, plan=the_plan, **data_sources(args)):
                print(f"{item.name}: {item.notebook.name} -> {item.run_dir} (limit {item.timeout_s} s)")
                for key, value in item.parameters.items():
                    print(f"    {key} = {value!r}")
                resolved = plan.settings_for_run(item, plan=the_plan)
                if resolved is not None:
                    print("    resolved: " + ", ".join(f"{key}={value}" for key, value in resolved.as_dict().items()
                                                   if key not in ("profile", "scaled_down", "data_dir")))
            return 0
        signum = None
        try:
            outcomes, index = runner.run_plan(
                args.profile, only=args.only, suite=args.suite, skip_bad=args.skip_bad, force=args.force,
                jobs=args.jobs, plan_file=args.plan, scheduler=args.scheduler, cluster=args.cluster,
                **data_sources(args),
            )
        except (runner.StudyLocked, runner.ClusterError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        except runner.Interrupted as stopped:
            signum, outcomes, index = stopped.signum, stopped.outcomes, stopped.index
        _print_summary(outcomes, index, signum)
        if signum is not None:
            return 128 + signum  # 130 for SIGINT, as a shell reports it
        return 1 if any(o.status in ("failed", "timeout") for o in outcomes) else 0
    if args.command == "refresh-notebooks":
        from helpers import runner

        runner.refresh_notebooks(args.notebooks or None)
        return 0
    if args.command == "weights":
        return _weights(args.action, args.backbones)
    if args.command == "data":
        from helpers import downloads

        if args.action == "list":
            print("\n".join(downloads.list_sources()))
            return 0
        if not args.name or not args.to:
            raise ValueError(f"data {args.action} needs a dataset NAME and --to DIR")
        source = downloads.get_source(args.name)
        try:
            if args.action == "verify":
                report = downloads.verify(args.name, args.to)
                print(report)
                return 0 if report.ok else 1
            if source.url is None and not args.url:
                print(downloads.manual_instructions(args.name, args.to))
                return 0
            downloads.download(args.name, args.to, url=args.url, sha256=args.sha256, progress=not args.no_progress)
            return 0
        except OSError as error:  # disk full, permissions: same short form as the other errors
            print(f"error: {error}", file=sys.stderr)
            return 2
    return 2


def data_sources(args: argparse.Namespace) -> dict[str, object]:
    """``run``'s data options as keyword arguments of :func:`helpers.plan.planned_runs`: the
    repeated ``--data-dir`` / ``--test-data-dir`` values as one folder or ``{dataset: folder}``."""
    from helpers import datasets

    return {"dataset": args.dataset, "data_dir": datasets.parse_data_dirs(args.data_dir),
            "test_dataset": args.test_dataset, "test_data_dir": datasets.parse_data_dirs(args.test_data_dir),
            "split_file": args.split_file}


def _print_summary(outcomes: list[RunOutcome], index: Path, signum: int | None) -> None:
    """The last lines of ``run``: how many runs are ok, which failed, which were interrupted."""
    import signal

    def named(status: str) -> list[str]:
        return [o.name for o in outcomes if o.status == status]

    failed = [o for o in outcomes if o.status in ("failed", "timeout")]
    unavailable, stopped, not_started = named("unavailable"), named("interrupted"), named("not started")
    done = sum(o.status in ("ok", "skipped") for o in outcomes)
    print(f"\n{done} of {len(outcomes)} runs ok"
          + (f", {len(unavailable)} not run for want of ImageNet weights (see the report)" if unavailable else "")
          + (f", {len(stopped)} interrupted, {len(not_started)} not started" if signum is not None else "")
          + f"; report: {index}")
    for outcome in failed:
        print(f"  {outcome.name}: {outcome.status}: {outcome.message}", file=sys.stderr)
    if signum is not None:
        parts = ([f"{', '.join(stopped)} stopped"] if stopped else []) + (
            [f"{', '.join(not_started)} not started"] if not_started else [])
        print(f"interrupted by {signal.Signals(signum).name}" + (": " + "; ".join(parts) if parts else ""),
              file=sys.stderr)


def _weights(action: str, names: list[str]) -> int:
    """``weights list``: each backbone's ImageNet file and whether Keras' cache has it;
    ``weights download``: fetch (and for AlexNet/GoogLeNet convert) the missing ones, with progress."""
    from helpers import models

    names = names or list(models.BACKBONES)
    missing = 0
    print(f"Keras' cache: {models.keras_models_dir()}")
    for name in names:
        spec = models.get_backbone(name)
        if action == "download":
            try:
                path = models.imagenet_weights_path(name)
            except models.WeightsUnavailableError as error:
                print(f"{name}: {error}", file=sys.stderr)
                missing += 1
                continue
        else:
            path = models.cached_imagenet_weights(name)
            missing += path is None
        print(f"{name:18} {spec.imagenet_files[0]:66} {'cached' if path else 'missing'}")
    return 1 if missing else 0


if __name__ == "__main__":
    from helpers.runner import skip_iri_grammars

    skip_iri_grammars()  # this process imports nbformat (reports, notebook metadata): seconds saved
    sys.exit(main())
