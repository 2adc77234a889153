#!/usr/bin/env bash
# Release 0.1, built from its tagged sources, with data in every table and messages waiting in the
# slot, upgraded with its applier to this tree in the order docs/upgrade.md gives; the wrong orders
# refused; every message applied exactly once, every row readable (tests/lib/upgrade_from.sh).
. "$(dirname "$0")/../lib/testlib.sh"
export UPGRADE_FROM=0.1
# shellcheck source=../lib/upgrade_from.sh
. "$TESTLIB_DIR/upgrade_from.sh"
