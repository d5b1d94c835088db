#!/usr/bin/env bash
# Print the CUDA toolkit folder (the one holding bin/nvcc), or nothing if there is none.
# nvcc may be a small wrapper script that execs the real one: follow it.
if [ -n "${CUDA_HOME:-}" ]; then echo "$CUDA_HOME"; exit 0; fi
nvcc=$(command -v nvcc 2>/dev/null) || exit 0
real=$(awk '/^exec /{print $2; exit}' "$nvcc" 2>/dev/null)
[ -n "$real" ] || real=$(readlink -f "$nvcc")
dirname "$(dirname "$real")"
