"""Block quantization: one class per ggml type (types/), backend dispatch, mix rules."""
