"""`make bench`: quantcli against llama.cpp on the same machine, model and threads, in one run."""
