#!/usr/bin/env bash
# The whole test suite, one pytest per RabbitMQ release, side by side.
#
# Most of the suite's time is spent waiting (brokers booting and restarting, pools
# draining, timeouts running out), not computing, so the RabbitMQ 4.0 tests run in a
# second pytest beside the first: integration and contract first, chaos last, while the
# first runs everything else with 3.10, chaos first. Arguments go to both.
#
#   tests/support/run_tests.sh [pytest args]      (PY=path/to/python, default .venv/bin/python)
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
log=$(mktemp)
trap 'rm -f "$log"' EXIT

TW_RABBITMQ_RELEASES=4.0 "$PY" -m pytest -p no:cacheprovider -k "rabbitmq-4.0" \
  tests/integration tests/contract tests/chaos "$@" >"$log" 2>&1 &
second=$!
TW_RABBITMQ_RELEASES=3.10 "$PY" -m pytest -p no:cacheprovider "$@"
first=$?
wait "$second"
second=$?

echo
echo "================ the same tests on RabbitMQ 4.0 (second pytest) ================"
cat "$log"
echo
echo "run_tests: RabbitMQ 3.10 and the rest: exit $first; RabbitMQ 4.0: exit $second"
# pytest's 5 (nothing collected) counts as a failure here: it means a release ran no test.
[[ $first -eq 0 && $second -eq 0 ]]
