#!/usr/bin/env bash
# The whole test suite, slow and Flink tests included (what .ci/run runs); the Flink tests
# run on the project's own local cluster (setup_env.sh fetches it) and may not skip.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow and not flink"`.
set -euo pipefail
cd "$(dirname "$0")/.."
MUSICREP_WITH_TEST_TOOLS=1 source scripts/setup_env.sh
export TF_CPP_MIN_LOG_LEVEL=2
status=0
# The slowest tests, so a CI log shows where its minutes go.
.venv/bin/pytest --durations=25 "$@" || status=$?
# pytest exits 5 when it collected no test: not a failure of the code under test.
if [ "$status" = 5 ]; then
  echo "pytest collected no tests" >&2
  exit 0
fi
exit "$status"
