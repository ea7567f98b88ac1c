"""Integer weight schemes for safetensors folders (compressed-tensors, later GPTQ/AWQ): the table and the RTN encoder.

`SCHEMES` is the one table of what each scheme name means; `rtn.encode` turns float rows into integer codes,
scales and zero points; `packing` lays codes into int32 words. The C twins live in quant/_kernels/int_rtn.c.
"""
from .scheme import SCHEMES, IntScheme, scheme_named

__all__ = ["SCHEMES", "IntScheme", "scheme_named"]
