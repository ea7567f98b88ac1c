"""The Typer CLI: one module per command; parsing and printing only.

Importing it also tunes the process for the work the commands do (each setting says why); they are set here,
before any command imports numpy, and a value the caller set wins.
"""
import ctypes
import os

# OpenBLAS's idle threads spin for about 2^28 cycles after every call before they sleep (its THREAD_TIMEOUT). The
# engine alternates BLAS calls with threaded work of its own (attention tasks, the kernels), so those spinning
# threads took a core from it: a GPTQ walk over SmolLM2 spent 16 s of its 54 s of CPU spinning, and ran 7-10 %
# longer. 4, OpenBLAS's minimum (16 cycles), puts them to sleep at once; waking them costs microseconds against
# calls of milliseconds. OpenBLAS reads it when it loads, and every subprocess inherits it.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# glibc's malloc: M_MMAP_THRESHOLD and M_TRIM_THRESHOLD (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def _reuse_freed_memory() -> None:
    """Keep freed blocks of up to 32 MB (glibc's largest mmap threshold) in the heap for the next allocation.

    The engine allocates and frees arrays of a few MB to a few tens of MB for every chunk of every block. By
    default glibc gives such blocks back to the kernel when they are freed, so each new one is faulted in and
    zeroed again, on the thread that allocates it: in a GPTQ run over SmolLM2 the page zeroing alone was 5 % of
    the CPU time, all of it on the main thread while the other cores waited. Peak memory is unchanged (what
    is kept is what the process already held); larger arrays are still mapped and unmapped. Skipped where
    malloc is not glibc's, or when the caller tuned it through MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ or "MALLOC_TRIM_THRESHOLD_" in os.environ:
        return
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, 32 << 20)
    mallopt(_M_TRIM_THRESHOLD, 1 << 30)


_reuse_freed_memory()
