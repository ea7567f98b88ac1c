"""quantcli: convert Hugging Face models into quantized GGUF and safetensors files."""
__version__ = "0.1.0"
