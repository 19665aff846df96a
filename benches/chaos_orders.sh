#!/usr/bin/env bash
# The consistency chaos test (tests/e2e/consistency.rs) with more orders:
# topologies/orders-db.yaml driven with N orders (default 100,000) while the
# api program, a worker replica, PostgreSQL and the orchestrator are killed
# with SIGKILL; then the database is checked: every accepted order stored
# and applied exactly once, none lost. Prints its counts and recovery times.
#
# Usage: benches/chaos_orders.sh [N]
# Needs what the test suite installs (scripts/setup-tools, scripts/setup-examples).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --workspace --all-targets
ORCH_CHAOS_ORDERS="${1:-100000}" cargo test -p integration-tests --test e2e \
    consistency::every_accepted_order -- --nocapture 2>&1 |
    grep -E '^(orders|recovery|kill)|test result|panicked|not settled'
