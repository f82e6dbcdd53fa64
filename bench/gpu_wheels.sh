#!/usr/bin/env bash
# Fetch, into .whl/ (ignored by git), the wheels the GPU machine's image lacks for bench/worker.py:
# that machine has Python 3.12 with PyTorch, transformers and accelerate, and reaches no registry.
# Then run bench/worker.py --device cuda there with `.whl` carried (the command is in BENCHMARKS.md).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl \
    diffusers==0.42.1 fastapi==0.165.0 starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.4 \
    pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 annotated-doc==0.0.7 \
    opentelemetry-api==1.45.2 python-multipart==0.0.34 aiosqlite==0.22.1
ls .whl
