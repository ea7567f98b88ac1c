"""Integer weight encoders for safetensors folders: round-to-nearest (`rtn.encode`, min-max and the clip search),
the backend switch between it and its C twin (`encode.encode_weight`, quant/_kernels/int_rtn.c), NF4 (`nf4`), and
the loader's per-token activation rounding (`activations`).

What they produce is described one layer down, in io/, because the folder formats store it: the scheme table
(io/int_scheme.py), the code container and the loader's rounding (io/int_codes.py), the NF4 code book
(io/nf4_codes.py) and the int32 bit packing (io/int_packing.py).
"""
