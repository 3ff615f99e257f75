#!/usr/bin/env bash
# Runs cargo-fuzz targets one after another and keeps a log of each run:
#   bash fuzz/run.sh SECONDS [TARGET...]     (default: every target)
# New inputs go to fuzz/work/<target>/ (not committed); the committed
# corpus fuzz/corpus/<target>/ is read as seeds. Minimise what was found
# into the committed corpus with:
#   cargo +nightly fuzz cmin <target> fuzz/corpus/<target> fuzz/work/<target>
# (run from fuzz/..). Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:?seconds per target}
shift
targets=("$@")
if ((${#targets[@]} == 0)); then
    targets=(imap_command mime smtp_session imap_session wal archive backup config list_pattern store_model)
fi
mkdir -p fuzz/work fuzz/logs
for t in "${targets[@]}"; do
    mkdir -p "fuzz/work/$t"
    log="fuzz/logs/$t-$(date -u +%Y%m%dT%H%M%SZ).log"
    echo "== $t for ${secs}s -> $log"
    (cd fuzz && cargo +nightly fuzz run -O "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=4096 -max_len=262144 -timeout=60 -detect_leaks=0 \
        -print_final_stats=1) >"$log" 2>&1 || echo "   $t stopped early (see $log)"
    grep -E "^#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|Done [0-9]+ runs" "$log" | tail -4 || true
done
