"""One module per block type; importing this package registers them all (quant.base._REGISTRY)."""
import importlib

# Each module defines one QuantType subclass. A module that does not exist yet is skipped, so types can
# land one at a time; the tests list which types must be present.
for _name in ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
              "iq4_nl", "iq4_xs", "tq1_0", "tq2_0"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{_name}":
            raise
