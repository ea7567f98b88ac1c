"""The CLI with a test-only calibrated method `t-stall` registered (tests/fixtures/block_methods.Stall), for the
interrupt tests: `python -m tests.pipeline.calibrated_cli convert ... --method t-stall`."""
from __future__ import annotations

import sys

from quantcli.quant.algorithms.registry import CALIBRATED, MethodEntry

if __name__ == "__main__":   # only in the child process: pytest's doctest collection imports this module too
    from quantcli.cli.app import main

    CALIBRATED["t-stall"] = MethodEntry("t-stall", "tests.fixtures.block_methods:Stall", (), "test only")
    sys.argv = ["quantcli", *sys.argv[1:]]
    main()
