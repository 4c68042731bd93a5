#!/usr/bin/env bash
# Installs medhash-sdk with its test dependencies and runs the test suite.
# torch is installed first, pinned, so that no requirement pulls another (CUDA) build.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --disable-pip-version-check "torch==2.13.0"
# The runtime (with its CPU, Ray and test extras) and the training side (export/), both editable.
python3 -m pip install -q --disable-pip-version-check -e ".[cpu,dist,dev]" -e ./export
# Type stubs only (the real tensorrt needs an NVIDIA GPU and >1 GB): --no-deps keeps pip from
# trying to install TensorRT itself.
python3 -m pip install -q --disable-pip-version-check --no-deps "tensorrt-stubs==10.13.*"
python3 -m pytest -q "$@"
