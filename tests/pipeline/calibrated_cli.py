"""The CLI with a test-only calibrated method `t-stall` registered (tests/fixtures/block_methods.Stall), for the
interrupt tests: `python -m tests.pipeline.calibrated_cli convert ... --method t-stall`."""
from __future__ import annotations

import sys

from quantcli.quant.algorithms.registry import CALIBRATED, MethodEntry

CALIBRATED["t-stall"] = MethodEntry("t-stall", "tests.fixtures.block_methods:Stall", (), "test only")

if __name__ == "__main__":
    from quantcli.cli.app import main

    sys.argv = ["quantcli", *sys.argv[1:]]
    main()
