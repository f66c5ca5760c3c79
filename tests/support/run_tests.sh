#!/usr/bin/env bash
# The whole test suite, as three pytests side by side.
#
# Most of the suite's time is spent waiting (brokers booting and restarting, pools
# draining, timeouts running out), not computing. So the tests that use RabbitMQ run
# once per release, each release in a pytest of its own (3.10: chaos first; 4.0:
# integration and contract first, chaos last), and a third pytest runs every test that
# is not run per release (unit tests, the job store, the dashboard; a few of them use
# the machine's broker) beside them. Arguments go to all three.
#
#   tests/support/run_tests.sh [pytest args]      (PY=path/to/python, default .venv/bin/python)
set -uo pipefail
cd "$(dirname "$0")/../.."
PY=${PY:-.venv/bin/python}
log4=$(mktemp)
lograw=$(mktemp)
trap 'rm -f "$log4" "$lograw"' EXIT

# A few long per-release tests that mostly wait (a minute-long delay, a store's faults)
# run in the third pytest instead, which has minutes to spare: each pytest ends sooner.
MOVED="test_jobs_cancel or test_jobs_faults"

TW_RABBITMQ_RELEASES=4.0 "$PY" -m pytest -p no:cacheprovider -k "rabbitmq-4.0 and not ($MOVED)" \
  --durations=15 tests/integration tests/contract tests/chaos "$@" >"$log4" 2>&1 &
second=$!
# Every test without a RabbitMQ release in its id. It has minutes to spare, and the two
# per-release pytests wait on worker pools and brokers that need the CPU on time: it
# yields the CPU to them (nice), rather than stretching the longest of the three.
TW_RABBITMQ_RELEASES=3.10,4.0 nice -n 5 "$PY" -m pytest -p no:cacheprovider \
  -k "not rabbitmq- or $MOVED" \
  --durations=15 "$@" >"$lograw" 2>&1 &
third=$!
TW_RABBITMQ_RELEASES=3.10 "$PY" -m pytest -p no:cacheprovider -k "rabbitmq-3.10 and not ($MOVED)" \
  --durations=15 "$@"
first=$?
wait "$second"
second=$?
wait "$third"
third=$?

echo
echo "================ the same tests on RabbitMQ 4.0 (second pytest) ================"
cat "$log4"
echo
echo "======== the tests not run per release, and the moved ones (third pytest) ========"
cat "$lograw"
echo
echo "run_tests: RabbitMQ 3.10: exit $first; RabbitMQ 4.0: exit $second;" \
  "not per release: exit $third"
# pytest's 5 (nothing collected) counts as a failure here: it means a part ran no test.
[[ $first -eq 0 && $second -eq 0 && $third -eq 0 ]]
