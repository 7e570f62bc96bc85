"""``digitserve-model``: inspect and manage a model repository.

    digitserve-model [--model-repo R] [--model NAME] list [--json]
    digitserve-model label set LABEL VERSION
    digitserve-model label remove LABEL
    digitserve-model rollback [--label stable] [--to VERSION]
    digitserve-model prune --keep N
    digitserve-model remove VERSION
    digitserve-model import PATH            (a version folder, verified, as the next version)

Changes are atomic and take effect on running servers at their next repository
check (or at once on SIGHUP). Exit codes: 0 done, 1 refused or failed, 2 usage.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import asdict
from pathlib import Path

from . import repository


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="digitserve-model", description="Inspect and manage a digitserve model repository."
    )
    parser.add_argument(
        "--model-repo",
        type=Path,
        default=Path(os.environ.get("DIGITSERVE_MODEL_REPO", "models")),
        help="model repository folder (env DIGITSERVE_MODEL_REPO; default ./models)",
    )
    parser.add_argument(
        "--model",
        default=os.environ.get("DIGITSERVE_DEFAULT_MODEL", "mnist"),
        help="model name (env DIGITSERVE_DEFAULT_MODEL; default mnist)",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="versions with their state, labels and accuracy")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument(
        "--no-verify", action="store_true", help="skip checksum verification (faster)"
    )

    label = commands.add_parser("label", help="set or remove a version label")
    label_commands = label.add_subparsers(dest="label_command", required=True)
    label_set = label_commands.add_parser("set", help="point LABEL at VERSION")
    label_set.add_argument("label")
    label_set.add_argument("version", type=int)
    label_remove = label_commands.add_parser("remove", help="remove LABEL")
    label_remove.add_argument("label")

    back = commands.add_parser(
        "rollback", help="move a label (stable) back to the previous verified version"
    )
    back.add_argument("--label", default="stable")
    back.add_argument("--to", type=int, help="roll back to this version")

    prune = commands.add_parser("prune", help="delete all but the newest N versions")
    prune.add_argument("--keep", type=int, required=True)

    remove = commands.add_parser("remove", help="delete one version (not a labelled one)")
    remove.add_argument("version", type=int)

    imported = commands.add_parser(
        "import", help="publish a copy of a version folder (it must verify) as the next version"
    )
    imported.add_argument("path", type=Path)
    return parser


def _list(args: argparse.Namespace) -> None:
    infos = repository.describe(args.model_repo, args.model, verify=not args.no_verify)
    if args.json:
        print(json.dumps([asdict(i) for i in infos], indent=2))
        return
    if not infos:
        print(f"model {args.model!r} has no published versions in {args.model_repo}")
        return
    print(f"{'VERSION':>7}  {'STATUS':<12} {'ACCURACY':>8}  {'LABELS':<16} CREATED")
    for i in infos:
        accuracy = f"{i.test_accuracy:.2%}" if i.test_accuracy is not None else "-"
        print(
            f"{i.version:>7}  {i.status[:40]:<12} {accuracy:>8}  "
            f"{','.join(i.labels) or '-':<16} {i.created_at or '-'}"
        )


def run(args: argparse.Namespace) -> str:
    repo, model = args.model_repo, args.model
    if args.command == "list":
        _list(args)
        return ""
    if args.command == "label" and args.label_command == "set":
        previous = repository.set_label(repo, model, args.label, args.version)
        moved = f" (was {previous})" if previous is not None else ""
        return f"{model}: label {args.label} -> version {args.version}{moved}"
    if args.command == "label":
        version = repository.remove_label(repo, model, args.label)
        return f"{model}: label {args.label} removed (was version {version})"
    if args.command == "rollback":
        previous, target = repository.rollback(repo, model, label=args.label, to=args.to)
        was = f"{previous}" if previous is not None else "unset"
        return f"{model}: label {args.label} rolled back to version {target} (was {was})"
    if args.command == "prune":
        removed, spared = repository.prune(repo, model, args.keep)
        text = f"{model}: removed versions {removed or 'none'}"
        if spared:
            text += f"; kept labelled versions {spared}"
        return text
    if args.command == "remove":
        repository.remove_version(repo, model, args.version)
        return f"{model}: version {args.version} removed"
    if args.command == "import":
        version = repository.import_version(args.path, repo, model)
        return f"{model}: {args.path} published as version {version}"
    raise AssertionError(f"unhandled command {args.command}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        message = run(args)
    except repository.RepositoryError as exc:
        print(f"digitserve-model: {exc}", file=sys.stderr)
        return 1
    if message:
        print(message)
    return 0


if __name__ == "__main__":
    sys.exit(main())
