"""``python -m models``: inspect detectors and manage their checkpoint files.

    python -m models params [NAME ...]            full-size parameter counts (built on meta)
    python -m models check NAME FILE [--sha256 H]  safe read + strict layout check (+ hash)
    python -m models convert NAME SRC DST          authors' file -> safetensors, canonical keys

Models are built on the ``meta`` device, so checks take seconds and no model memory.
Exit codes: 0 success, 2 a checkpoint error (message on stderr).
"""

from __future__ import annotations

import argparse
import sys

from . import create_model, list_models
from ._factory import convert_checkpoint
from ._loading import CheckpointError, sha256_file, verify_sha256


def count_parameters(name: str) -> int:
    """Parameters of the full-size model ``name`` (no memory: built on ``meta``)."""
    model = create_model(name, device="meta")
    return sum(p.numel() for p in model.parameters())


def _params(names: list[str]) -> int:
    names = names or list_models()
    width = max(len(n) for n in names)
    print(f"{'model':<{width}}  {'parameters':>15}  {'millions':>9}")
    for name in names:
        n = count_parameters(name)
        print(f"{name:<{width}}  {n:>15,}  {n / 1e6:>9.1f}")
    return 0


def _check(name: str, path: str, sha256: str | None) -> int:
    digest = verify_sha256(path, sha256) if sha256 else sha256_file(path)
    model = create_model(name, checkpoint=path, device="meta")
    print(f"{path}: ok for {name} ({model.load_report}); sha256 {digest}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("params", help="full-size parameter counts")
    p.add_argument("names", nargs="*", metavar="NAME")
    c = sub.add_parser("check", help="read a checkpoint safely and check it loads strictly")
    c.add_argument("name", choices=list_models(), metavar="NAME")
    c.add_argument("file")
    c.add_argument("--sha256", help="expected sha256 (or a prefix of 8+ hex digits)")
    v = sub.add_parser("convert", help="convert to safetensors under canonical key names")
    v.add_argument("name", choices=list_models(), metavar="NAME")
    v.add_argument("src")
    v.add_argument("dst")
    args = parser.parse_args(argv)
    try:
        if args.command == "params":
            return _params(args.names)
        if args.command == "check":
            return _check(args.name, args.file, args.sha256)
        digest = convert_checkpoint(args.name, args.src, args.dst)
        print(f"wrote {args.dst} (sha256 {digest})")
        return 0
    except (CheckpointError, KeyError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
