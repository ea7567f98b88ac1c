"""Methods that choose quantized values from data (GPTQ, AWQ) or by search (HQQ, SplitQuant); the encodings in
quant/int and quant/types then store what they chose. See base.py for the interface a calibrated method implements."""
