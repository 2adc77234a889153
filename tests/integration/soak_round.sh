#!/usr/bin/env bash
# One seeded 3-minute round of the randomized fault soak (tools/soak/, docs/reliability.md), as CI
# runs it: the Patroni pair with etcd on loopback, atx-applier (durability auto: sync under
# synchronous_mode) in a network namespace of its own, 8 clients with roles of their own, and every
# kind of fault (applier and apply backend SIGKILL, server crash, walsender SIGSTOP, Patroni
# failover and switchover, partition, full state directory, a privilege revoked), overlapping.
# The checks are the soak's own TAP lines; a failing one names the seed and the schedule.
# Knobs: ATX_SOAK_SEED (default 2025: CI replays one schedule; unset it with ATX_SOAK_SEED= for a
# fresh one), ATX_SOAK_MINUTES (3), ATX_SOAK_ARGS (more tools/atx soak options, e.g. --single).
# Without patroni/etcd it runs on a single server (--single) and says so.
set -uo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../lib/patroni.sh
. "$ROOT/tests/lib/patroni.sh"   # ha_have_tools (and cluster.sh: the server PG_CONFIG names)

if [ -n "${ATX_SOAK_SKIP:-}" ]; then
    echo "ok 1 - # skip the soak round: $ATX_SOAK_SKIP"
    echo "1..1"
    exit 0
fi
args=(--tap --minutes "${ATX_SOAK_MINUTES:-3}")
[ -n "${ATX_SOAK_SEED-2025}" ] && args+=(--seed "${ATX_SOAK_SEED-2025}")
if ! ha_have_tools && [[ " ${ATX_SOAK_ARGS:-} " != *" --single "* ]]; then
    echo "# patroni, etcd-server or python3-etcd missing: a single server instead of the pair"
    args+=(--single)
fi
# shellcheck disable=SC2086   # ATX_SOAK_ARGS is words on purpose
exec /usr/bin/python3 "$ROOT/tools/soak/soak.py" "${args[@]}" ${ATX_SOAK_ARGS:-}
