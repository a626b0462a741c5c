#!/usr/bin/env bash
# The whole test suite, as root: installs what is missing, then runs pytest.
# The fixtures start their own etcd servers and network namespaces and remove them.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(scripts/bootstrap.sh)
# Test the installed package, not the source tree.
exec "$bin/python" -m pytest -p no:cacheprovider tests "$@"
