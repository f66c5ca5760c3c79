#!/usr/bin/env bash
# The unit tests (tests/unit: no broker, no database server) on the other Pythons
# taskwarren supports, 3.12 and 3.13; `make test` runs the whole suite on the first.
#
# The whole suite takes 13-15 minutes and mostly waits on brokers; running it three
# times would triple that. The unit tests are what differs between Pythons (the
# language, the standard library's sqlite3, warnings), and take about 80 s each. Each
# Python gets a virtualenv of its own, .venv-3.12 and .venv-3.13, with the test extra at
# the pinned versions (requirements/constraints.txt), remade when pyproject.toml or the
# constraints change (about 40 s each).
#
#   tests/support/other_pythons.sh [pytest args]
#
# The interpreters: python3.12 and python3.13 on PATH, else pyenv's. One missing is a
# failure under CI=true and a note otherwise.
set -uo pipefail
cd "$(dirname "$0")/../.."

# The first candidate that runs and is that version (a pyenv shim on PATH may not be).
find_python() {
  local version=$1 candidate
  for candidate in $(command -v "python$version" 2>/dev/null) \
      $(ls -d "${PYENV_ROOT:-$HOME/.pyenv}/versions/$version".*/bin/python3 2>/dev/null \
        | sort -rV); do
    if [[ $("$candidate" -c 'import sys; print("%d.%d" % sys.version_info[:2])' \
            2>/dev/null) == "$version" ]]; then
      echo "$candidate"
      return
    fi
  done
}

status=0
for version in 3.12 3.13; do
  python=$(find_python "$version")
  if [[ -z $python ]]; then
    echo "other_pythons: no Python $version found (python$version on PATH, or pyenv's)"
    [[ ${CI:-} == true ]] && status=1
    continue
  fi
  venv=.venv-$version
  if [[ ! -f $venv/.installed || pyproject.toml -nt $venv/.installed \
        || requirements/constraints.txt -nt $venv/.installed ]]; then
    echo "other_pythons: making $venv with $python"
    rm -rf "$venv"
    "$python" -m venv "$venv" \
      && "$venv/bin/python" -m pip install -q --upgrade pip \
      && "$venv/bin/python" -m pip install -q -c requirements/constraints.txt \
           -e '.[test]' -e ./workers \
      && touch "$venv/.installed" \
      || { echo "other_pythons: installing into $venv failed"; status=1; continue; }
  fi
  echo "other_pythons: tests/unit on $("$venv/bin/python" -V)"
  "$venv/bin/python" -m pytest -p no:cacheprovider -q tests/unit "$@" || status=1
done
exit "$status"
