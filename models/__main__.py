"""``python -m models``: list the registered detectors with their full-size parameter counts.

Models are built on the ``meta`` device, so this takes seconds and no memory.
"""

from __future__ import annotations

import argparse

from . import create_model, list_models


def count_parameters(name: str) -> int:
    model = create_model(name, device="meta")
    return sum(p.numel() for p in model.parameters())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models", description=__doc__)
    parser.add_argument("names", nargs="*", help="models to show (default: all)")
    args = parser.parse_args(argv)
    names = args.names or list_models()
    width = max(len(n) for n in names)
    print(f"{'model':<{width}}  {'parameters':>15}  {'millions':>9}")
    for name in names:
        n = count_parameters(name)
        print(f"{name:<{width}}  {n:>15,}  {n / 1e6:>9.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
