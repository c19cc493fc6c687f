#!/usr/bin/env bash
# Install the bcpath library (no dependencies: the env file has them) into the fresh env.
set -euo pipefail
pip install --no-deps "$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
