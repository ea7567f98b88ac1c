"""The Typer CLI: one module per command; parsing and printing only."""
import os

# OpenBLAS's idle threads spin for about 2^28 cycles after every call before they sleep (its THREAD_TIMEOUT). The
# engine alternates BLAS calls with threaded work of its own (attention tasks, the kernels), so those spinning
# threads took a core from it: a GPTQ walk over SmolLM2 spent 16 s of its 54 s of CPU spinning, and ran 7-10 %
# longer. 4, OpenBLAS's minimum (16 cycles), puts them to sleep at once; waking them costs microseconds against
# calls of milliseconds. OpenBLAS reads it when it loads, so it is set here, before any command imports numpy
# (and every subprocess inherits it); a value the caller set wins.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
