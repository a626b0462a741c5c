#!/usr/bin/env bash
# The whole test suite, as root: installs what is missing, then runs pytest.
# The fixtures start their own etcd servers and network namespaces and remove them.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(scripts/bootstrap.sh)
# Test the installed package, not the source tree. No path given: pyproject's testpaths
# (tests/); with paths (scripts/test.sh tests/unit/test_x.py -q) only those.
exec "$bin/python" -m pytest -p no:cacheprovider "$@"
