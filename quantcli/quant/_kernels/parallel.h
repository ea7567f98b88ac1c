/* The one thread pool of quantcli's C entry points (defined in module.c, compiled once).
 *
 * qc_parallel runs fn over n job records of job_size bytes each, with the GIL released: job 0 on the calling
 * thread, the others on threads of their own; a job whose thread cannot start runs on the calling thread, so the
 * result is complete either way. n must not exceed QC_MAX_THREADS. Callers split their rows so that each job's
 * output is independent of n, which keeps the bytes the same for any thread count. */
#ifndef QUANTCLI_PARALLEL_H
#define QUANTCLI_PARALLEL_H

#include <stddef.h>

#define QC_MAX_THREADS 256

void qc_parallel(void *(*fn)(void *), void *jobs, size_t job_size, int n);

#endif
