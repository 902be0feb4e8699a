#!/usr/bin/env bash
# Lint, then the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
# The browser tests need Chromium; if it cannot be installed they fail (below) instead of silently skipping.
bash scripts/setup_browser.sh || echo "test.sh: could not install chromium; the browser tests will fail" >&2
export BORA_REQUIRE_BROWSER=1
# Screenshots of every app tab from the browser test land here, for people to look at after a run.
export BORA_TEST_ARTIFACTS="${BORA_TEST_ARTIFACTS:-$PWD/test-artifacts}"
source scripts/env.sh
# The tests run tiny models, whose ops are too small to share among threads; on a busy machine (CI) two threads
# wait at every op's barrier for each other's time slices (bora_diffusion/threads.py). One thread each, unless asked.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
.venv/bin/ruff check bora_diffusion tests scripts app.py
.venv/bin/ruff format --check bora_diffusion tests scripts app.py
# Tests must not write into the user's home: the embedded default is built in a throwaway folder.
export BORA_DIFFUSION_HOME="${BORA_DIFFUSION_HOME:-$(mktemp -d)}"
# Two workers, one per core (BORA_TEST_WORKERS=1 for one process). Whole files go to a worker, so module fixtures
# are built once; the slow end-to-end files start first (tests/conftest.py) and the rest runs beside them.
workers="${BORA_TEST_WORKERS:-2}"
parallel=()
if [[ "$workers" != 1 ]]; then
    parallel=(-n "$workers" --dist loadfile --no-loadscope-reorder)
fi
exec .venv/bin/python -m pytest "${parallel[@]}" "$@"
