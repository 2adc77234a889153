#!/usr/bin/env bash
# Reproduction (found by tools/atx soak, seeds 4 and 5, 2026-12-06): atx-applier started while its
# state directory is full exits with status 1 (event=startup_failed, RocksDB cannot open:
# "No space left on device"). packaging/atx-applier.service has RestartPreventExitStatus=1 3, so
# under systemd the applier then stays down for good although the disk may have room again a
# moment later (the soak restarts it as a supervisor that retries would, and counts a TODO).
# Root only (a 16 MB tmpfs).
#   PG_CONFIG=... bash tools/soak/repro/startup_enospc.sh
set -uo pipefail
. "$(dirname "$0")/../../../tests/lib/testlib.sh"
[ "$(id -u)" = 0 ] || { echo "needs root (mount)"; exit 2; }
atx_test_cluster || exit 2
mkdir -p "$TEST_DIR/state"
mount -t tmpfs -o size=16m tmpfs "$TEST_DIR/state" || exit 2
trap 'umount -l "$TEST_DIR/state"; _testlib_cleanup' EXIT
applier_start; wait_for_slot; applier_stop   # a state directory that exists, as after any run
dd if=/dev/zero of="$TEST_DIR/state/filler" bs=1M 2>/dev/null
applier_start
wait "$APPLIER_PID"; rc=$?; APPLIER_PID=""
echo "exit status with the state directory full: $rc"
grep -o 'event=startup_failed.*' "$TEST_DIR/applier.log" | tail -n 1 | cut -c1-200
grep -n 'RestartPreventExitStatus' "$ATX_ROOT/packaging/atx-applier.service"
rm -f "$TEST_DIR/state/filler"
