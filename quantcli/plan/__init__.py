"""The plans: consumers of the model description (quantcli.models.spec) that say, from metadata alone, what each
output tensor is. gguf.py plans a GGUF file, safetensors.py a quantized safetensors folder."""
