"""A batch worker with the faults of tests/pipeline/fault_cli.py applied (see there for the variables)."""
from __future__ import annotations

import sys

import tests.pipeline.fault_cli  # noqa: F401 - installs the faults
from quantcli.pipeline.batch_worker import entry

if __name__ == "__main__":
    sys.exit(entry(sys.argv[1:]))
