"""The float32 CPU forward pass (quantcli.engine.forward.Engine) that calibration and verification run.

    eng = Engine.from_hf(Path("SmolLM2-135M-Instruct"), threads=2)
    logits = next(eng.run(np.array([[1, 2, 3]], dtype=np.int32)))     # (3, 49152) float32
"""
from .forward import BlockStep, Capture, Engine

__all__ = ["BlockStep", "Capture", "Engine"]
