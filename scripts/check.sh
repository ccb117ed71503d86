#!/usr/bin/env bash
# The whole test suite, as CI runs it: lint, format, strict typing, then pytest (e2e included: as
# root they run for real; in CI they must not skip).
set -euo pipefail
cd "$(dirname "$0")/.."
.venv/bin/ruff check fwemu tests bench
.venv/bin/ruff format --check fwemu tests bench
.venv/bin/mypy --strict fwemu
exec .venv/bin/pytest "$@"
