"""Command line: ``python -m helpers run --profile {smoke,cpu,paper} [--only RUN ...]``."""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m helpers", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the study plan (notebooks/study.yaml) with papermill")
    run.add_argument("--profile", default="cpu", help="smoke, cpu (default) or paper")
    run.add_argument("--only", nargs="+", metavar="RUN", help="run only these runs of the plan")
    run.add_argument("--dataset", help="dataset registry name, e.g. synthetic or cbis-sample")
    run.add_argument("--data-dir", help="folder of the dataset on disk")
    run.add_argument("--force", action="store_true", help="rerun runs whose inputs have not changed")
    run.add_argument("--dry-run", action="store_true", help="list the planned runs and their parameters")
    refresh = commands.add_parser("refresh-notebooks", help="re-execute the committed notebooks (smoke) to refresh their stored outputs")
    refresh.add_argument("notebooks", nargs="*", help="notebook files (default: all in notebooks/)")
    args = parser.parse_args(argv)

    try:
        return _dispatch(args)
    except (KeyError, ValueError) as error:  # unknown profile or run, unreadable plan
        print(f"error: {error.args[0] if error.args else error}", file=sys.stderr)
        return 2


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "run":
        from helpers import plan, runner

        if args.dry_run:
            for item in plan.planned_runs(args.profile, only=args.only, dataset=args.dataset, data_dir=args.data_dir):
                print(f"{item.name}: {item.notebook.name} -> {item.run_dir} (limit {item.timeout_s} s)")
                for key, value in item.parameters.items():
                    print(f"    {key} = {value!r}")
            return 0
        outcomes, index = runner.run_plan(
            args.profile, only=args.only, dataset=args.dataset, data_dir=args.data_dir, force=args.force
        )
        failed = [o for o in outcomes if o.status in ("failed", "timeout")]
        print(f"\n{len(outcomes) - len(failed)} of {len(outcomes)} runs ok; report: {index}")
        for outcome in failed:
            print(f"  {outcome.name}: {outcome.status}: {outcome.message}", file=sys.stderr)
        return 1 if failed else 0
    if args.command == "refresh-notebooks":
        from helpers import runner

        runner.refresh_notebooks(args.notebooks or None)
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
