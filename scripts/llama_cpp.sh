#!/usr/bin/env bash
# Builds llama.cpp's tools (llama-bench, llama-perplexity, llama-quantize, llama-export-lora) from the
# llama.cpp source vendored in the `llama-cpp-python` source package on PyPI, with CMake from PyPI, into
# .cache/llama.cpp/ (once; ~4 minutes on 2 cores). Prints the directory holding the binaries.
# A reference for scripts/bench_infer.sh and fixture scripts; never used by the test suite.
# usage: scripts/llama_cpp.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}
version=0.3.36
root=.cache/llama.cpp
src=$root/llama_cpp_python-$version/vendor/llama.cpp
bin=$src/build/bin
tools=(llama-bench llama-perplexity llama-quantize llama-export-lora)
if ! [ -x "$bin/llama-bench" ]; then
  mkdir -p "$root"
  if ! [ -d "$src" ]; then
    "$py" -m pip download -q --no-deps --no-binary :all: -d "$root/dl" "llama-cpp-python==$version" >&2
    tar -xzf "$root/dl/llama_cpp_python-$version.tar.gz" -C "$root"
  fi
  cmake=$(command -v cmake || true)
  if [ -z "$cmake" ]; then
    "$py" -m pip install -q --target "$root/cmake" cmake >&2
    cmake=$root/cmake/cmake/data/bin/cmake  # the wheel carries the real binary
  fi
  $cmake -S "$src" -B "$src/build" -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DCMAKE_BUILD_TYPE=Release >&2
  $cmake --build "$src/build" -j "$(nproc)" --target "${tools[@]}" >&2
fi
echo "$bin"
