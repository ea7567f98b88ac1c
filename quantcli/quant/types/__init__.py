"""One module per block type; importing this package registers them all (quant.base._REGISTRY)."""
from . import iq4_nl, iq4_xs, q2_k, q3_k, q4_0, q4_1, q4_k, q5_0, q5_1, q5_k, q6_k, q8_0, tq1_0, tq2_0  # noqa: F401
