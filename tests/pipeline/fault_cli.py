"""Run the quantcli CLI with a fault injected at an OS boundary, so tests can reach states a healthy machine
does not produce on demand. Everything else is the real program.

    QC_MARKER=/tmp/m QC_SLOW_TYPE=F16 python -m tests.pipeline.fault_cli convert MODEL ...

QC_MARKER / QC_SLOW_TYPE / QC_SLOW_SECONDS: after each tensor of type QC_SLOW_TYPE (any type when unset) is
    encoded, touch the marker file and sleep (default 0.2 s): time to send a signal while outputs are open
    under their temporary names.
QC_FAKE_FREE_BYTES: shutil.disk_usage reports this much free space (a nearly full disk).
QC_BREAK_TYPE: an output of this type loses its last byte just before its rename (a writer bug: the file no
    longer holds the tensor data its header promises), so the verify step sees a broken file.

Batch workers run tests.pipeline.fault_worker, which applies the same faults in the worker process.
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

from quantcli.stages import quantize

_real_encode = quantize.Encoder.encode


def _slow_encode(self, t, raw, *rest):  # type: ignore[no-untyped-def]
    data = _real_encode(self, t, raw, *rest)
    wanted = os.environ.get("QC_SLOW_TYPE")
    if not wanted or t.qtype.name == wanted:
        Path(os.environ["QC_MARKER"]).touch()
        time.sleep(float(os.environ.get("QC_SLOW_SECONDS", "0.2")))
    return data


if os.environ.get("QC_MARKER"):
    quantize.Encoder.encode = _slow_encode  # type: ignore[method-assign]

if os.environ.get("QC_FAKE_FREE_BYTES"):
    _real_usage = shutil.disk_usage
    _free = int(os.environ["QC_FAKE_FREE_BYTES"])

    def _usage(path):  # type: ignore[no-untyped-def]
        real = _real_usage(path)
        return type(real)(real.total, real.total - _free, _free)

    shutil.disk_usage = _usage  # type: ignore[assignment]

if os.environ.get("QC_BREAK_TYPE"):
    from quantcli.io import gguf_writer

    _real_commit = gguf_writer.GGUFStreamWriter.commit

    def _broken_commit(self):  # type: ignore[no-untyped-def]
        _real_commit(self)
        if os.environ["QC_BREAK_TYPE"] in {t.qtype.name for t in self.tensors}:
            os.truncate(self.path, self.path.stat().st_size - 1)   # the file loses its last byte

    gguf_writer.GGUFStreamWriter.commit = _broken_commit  # type: ignore[method-assign]

from quantcli.pipeline import batch as _batch

_batch.WORKER_MODULE = "tests.pipeline.fault_worker"

if __name__ == "__main__":
    from quantcli.cli.app import main

    sys.argv = ["quantcli", *sys.argv[1:]]
    main()
