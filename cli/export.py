"""`python -m search export`: write a design (a preset, a JSON file, or a study's trial) as a hook module."""

from __future__ import annotations

import argparse
from pathlib import Path

from clharness.paths import check_out_path

from cli.options import add_reference, add_storage
from evaluation.errors import UserError
from search.export import trial_source
from search.records import best_promoted_study
from search.storage import display_url, read_storage_url, storage_note


def register(sub: argparse._SubParsersAction) -> None:
    """Add the `export` subcommand."""
    parser = sub.add_parser(
        "export",
        help="write a design as a standalone custom_regularization.py",
        description="Write a preset, a design JSON file or a study's trial as a standalone hook module.",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--preset", help="a preset name (ewc, online_ewc, si, mas, l2, none)")
    source.add_argument("--design", metavar="FILE.json", help="a JSON file holding one design")
    source.add_argument(
        "--study",
        nargs="+",
        help="a study name: exports the source its trial scored (the best by default); several names (the "
        "campaign, then its tuned baselines): the best trial of the one whose best promoted score is highest, "
        "each study promoted at the same fidelity",
    )
    parser.add_argument(
        "--trial", type=int, help="a complete trial's number within one --study (default: the best trial)"
    )
    add_storage(parser, of="--study")
    add_reference(parser)
    parser.add_argument("--out", required=True, metavar="FILE", help="the module to write (atomically)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate (or fetch) the source and write it atomically."""
    import space  # deferred: it imports torch, which the other commands start without

    if (args.trial is not None or args.storage or args.reference) and not args.study:
        raise UserError("--trial, --storage and --reference go with --study")
    # Before any work: reading a study can be slow, and an unusable --out would otherwise fail only at the write.
    check_out_path(args.out, example="custom_regularization.py")
    where = ""
    if args.preset is not None:
        if args.preset not in space.PRESETS:
            raise UserError(f"unknown preset {args.preset!r}; choose one of {', '.join(space.PRESETS)}")
        source = space.generate_source(space.PRESETS[args.preset], {"preset": args.preset})
    elif args.design is not None:
        path = Path(args.design)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"cannot read design file {path}: {exc.strerror or exc}") from exc
        except UnicodeDecodeError as exc:
            raise UserError(
                f"{path}: not UTF-8 text (offset {exc.start}); save the design file as UTF-8"
            ) from exc
        try:
            design = space.Design.from_json(text)
        except space.DesignError as exc:
            raise UserError(f"{path}: {exc}") from exc
        source = space.generate_source(design)
    else:
        if len(args.study) > 1 and (args.trial is not None or args.storage):
            raise UserError("--trial and --storage go with one --study")
        urls = {name: read_storage_url(name, args.storage, reference=args.reference) for name in args.study}
        name = args.study[0] if len(urls) == 1 else best_promoted_study(urls)
        where = f" from study {name} in {display_url(urls[name])}{storage_note(name, urls[name])}"
        try:
            source = trial_source(name, urls[name], args.trial)
        except UserError as exc:  # said with the storage it read, and how to read the committed one
            if "\n" in str(exc) or display_url(urls[name]) in str(exc):
                raise
            raise type(exc)(f"{exc} (read{where})") from exc
    space.write_module(args.out, source)
    print(f"wrote {args.out}{where}")
    return 0
