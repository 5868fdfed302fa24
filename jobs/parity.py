"""Compare our STAR with the official fixtures in a folder of the format of ../shared/parity (I2VGen-XL
STAR) or ../shared/parity_cogvideox (CogVideoX STAR; told apart by the files the folder holds).

    python jobs/parity.py ../shared/parity
    python jobs/parity.py ../shared/parity_cogvideox

Prints one line per fixture with its max absolute error; exits 1 when any error is above its
tolerance, 2 when the folder holds no fixture at all.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import torch  # noqa: E402

from star_model.parity import Check, cogvideox, denoiser, losses, sampling  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder in the format of shared/parity (see its README.md)")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
    torch.manual_seed(0)  # nothing here should depend on it; set so a mistake is at least repeatable

    start = time.perf_counter()
    is_cogvideox = cogvideox.is_fixture(args.folder)
    results: list[Check] = cogvideox.checks(args.folder) if is_cogvideox else i2vgen_checks(args.folder)
    for check in results:
        print(check.line(), flush=True)
    if not results:
        print(f"no parity fixture found in {args.folder}", file=sys.stderr)
        return 2
    failed = [c for c in results if not c.passed]
    print(f"{len(results) - len(failed)} passed, {len(failed)} failed "
          f"({time.perf_counter() - start:.1f} s)")
    return 1 if failed else 0


def i2vgen_checks(folder: Path) -> list[Check]:
    results = denoiser.checks(folder)
    tiny = denoiser.build_fixture_denoiser(folder) if (folder / "tiny_config.json").exists() else None
    return results + sampling.checks(folder, tiny) + losses.checks(folder)


if __name__ == "__main__":
    raise SystemExit(main())
