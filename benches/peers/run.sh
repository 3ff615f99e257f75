#!/usr/bin/env bash
# Side-by-side benchmark: tiermail against Dovecot on this machine, same
# load, same durability (every write fsynced before it is acknowledged),
# alternating runs, medians and ratios. Postfix provides smtp-source as a
# second, independent load tool.
#
#   bash benches/peers/run.sh            # 3 rounds, about 5 minutes on 2 cores
#   bash benches/peers/run.sh --quick    # 1 round, smaller loads, under 3 minutes
#
# Writes docs/benchmarks-peers.json and the "tiermail vs Dovecot" table in
# docs/benchmarks.md. Every process it starts is stopped by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)

QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
if ((QUICK)); then
    ROUNDS=1; N4=400; N64=100; FILL=300; IMAP_SECS=3; IDLE=1000; AGED=250
else
    ROUNDS=3; N4=3000; N64=600; FILL=1000; IMAP_SECS=8; IDLE=5000; AGED=1500
fi
PASSWORD=benchpw

# shellcheck source=benches/peers/lib.sh
. benches/peers/lib.sh
peers_install dovecot-imapd dovecot-lmtpd postfix
peers_start peers 200
RES=$WORK/results.jsonl
: > "$RES"

record() { # workload server round json
    echo "{\"workload\": \"$1\", \"server\": \"$2\", \"round\": $3, \"result\": $4}" >> "$RES"
    echo "  $2 $1: $4"
}

# Memory of a server: its process and all descendants (RSS and PSS sums).
memory() {
    python3 - "$1" <<'EOF'
import os, sys
root = int(sys.argv[1])
parent = {}
for d in os.listdir("/proc"):
    if d.isdigit():
        try:
            stat = open(f"/proc/{d}/stat").read()
            parent[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
        except OSError:
            pass
tree, grew = {root}, True
while grew:
    grew = False
    for pid, pp in parent.items():
        if pp in tree and pid not in tree:
            tree.add(pid)
            grew = True
rss = pss = n = 0
for pid in tree:
    try:
        for line in open(f"/proc/{pid}/smaps_rollup"):
            k, v = line.split(":", 1)
            if k == "Rss": rss += int(v.split()[0])
            if k == "Pss": pss += int(v.split()[0])
        n += 1
    except OSError:
        pass
print(f'{{"processes": {n}, "rss_kib": {rss}, "pss_kib": {pss}}}')
EOF
}

echo "== delivery over LMTP (tiermail-load)"
for r in $(seq 1 "$ROUNDS"); do
    for size in 4096 65536; do
        n=$N4; [ "$size" = 65536 ] && n=$N64
        for sess in 1 16; do
            for srv in tiermail dovecot; do
                out=$("$LOAD" deliver --addr "127.0.0.1:${LMTP[$srv]}" --lmtp --sessions "$sess" \
                    --messages "$n" --size "$size" --users 100 --offset 100 --seed "$r")
                record "LMTP $((size / 1024)) KB, $sess sessions (msg/s)" "$srv" "$r" "$out"
            done
        done
    done
done

echo "== delivery over LMTP (Postfix smtp-source)"
for r in $(seq 1 "$ROUNDS"); do
    for size in 4096 65536; do
        n=$N4; [ "$size" = 65536 ] && n=$N64
        for sess in 1 16; do
            for srv in tiermail dovecot; do
                t0=$(date +%s.%N)
                smtp-source -L -s "$sess" -l "$size" -m "$n" -f load@remote.test \
                    -t "bench$((150 + r))@example.test" "127.0.0.1:${LMTP[$srv]}"
                t1=$(date +%s.%N)
                rate=$(python3 -c "print(round($n / ($t1 - $t0), 1))")
                record "smtp-source LMTP $((size / 1024)) KB, $sess sessions (msg/s)" "$srv" "$r" \
                    "{\"msg_per_s\": $rate}"
            done
        done
    done
done

echo "== filling 16 mailboxes with $FILL corpus messages each"
for srv in tiermail dovecot; do
    for u in $(seq 0 15); do
        "$LOAD" deliver --addr "127.0.0.1:${LMTP[$srv]}" --lmtp --sessions 4 --messages "$FILL" \
            --size 0 --only-user "$u" --seed 7 > /dev/null
    done
done

echo "== IMAP command mix, 16 clients"
for r in $(seq 1 "$ROUNDS"); do
    for srv in tiermail dovecot; do
        out=$("$LOAD" imap --addr "127.0.0.1:${IMAP[$srv]}" --clients 16 --seconds "$IMAP_SECS" \
            --messages "$FILL" --password "$PASSWORD")
        record "IMAP mix" "$srv" "$r" "$out"
    done
done

echo "== archive move: $AGED aged messages (400 days) for each of 16 users"
for srv in tiermail dovecot; do
    "$LOAD" append --addr "127.0.0.1:${IMAP[$srv]}" --users 16 --messages "$AGED" --days 400 \
        --password "$PASSWORD" > /dev/null
done
t0=$(date +%s.%N)
"$TIERMAIL" --config "$WORK/t/tiermail.toml" archive run > "$WORK/t/archive-run.out"
t1=$(date +%s.%N)
cat "$WORK/t/archive-run.out"
grep -q "archived $((16 * AGED)) " "$WORK/t/archive-run.out" || { echo "tiermail did not archive them all" >&2; exit 1; }
rate=$(python3 -c "print(round(16 * $AGED / ($t1 - $t0), 1))")
record "archive move of aged mail (msg/s)" tiermail 1 "{\"msg_per_s\": $rate}"
t0=$(date +%s.%N)
doveadm -c "$WORK/d/dovecot.conf" altmove -A before 30d
t1=$(date +%s.%N)
alt_kib=$(du -sk "$WORK/d/alt" | cut -f1)
echo "dovecot ALT storage now holds ${alt_kib} KiB"
[ "$alt_kib" -gt 1000 ] || { echo "dovecot moved nothing to ALT storage" >&2; exit 1; }
rate=$(python3 -c "print(round(16 * $AGED / ($t1 - $t0), 1))")
record "archive move of aged mail (msg/s)" dovecot 1 "{\"msg_per_s\": $rate}"

echo "== full backup of each server's mail (bytes written to the backup per second)"
t0=$(date +%s.%N)
"$TIERMAIL" --config "$WORK/t/tiermail.toml" backup run > "$WORK/t/backup-run.out"
t1=$(date +%s.%N)
cat "$WORK/t/backup-run.out"
bytes=$(du -sb "$WORK/t/data/backups" | cut -f1)
rate=$(python3 -c "print(round($bytes / 1e6 / ($t1 - $t0), 1))")
record "full backup (MB/s)" tiermail 1 "{\"mb_per_s\": $rate, \"bytes\": $bytes}"
mkdir -p "$WORK/d/backup"
chown "$D_UID:$D_GID" "$WORK/d/backup"
t0=$(date +%s.%N)
doveadm -c "$WORK/d/dovecot.conf" backup -A "mdbox:$WORK/d/backup/%d/%n"
t1=$(date +%s.%N)
bytes=$(du -sb "$WORK/d/backup" | cut -f1)
[ "$bytes" -gt 1000000 ] || { echo "doveadm backup wrote nothing" >&2; exit 1; }
rate=$(python3 -c "print(round($bytes / 1e6 / ($t1 - $t0), 1))")
record "full backup (MB/s)" dovecot 1 "{\"mb_per_s\": $rate, \"bytes\": $bytes}"

echo "== $IDLE idle authenticated IMAP connections"
for srv in tiermail dovecot; do
    before=$(memory "${PID[$srv]}")
    fifo=$WORK/idle.$srv
    mkfifo "$fifo"
    "$LOAD" idle --addr "127.0.0.1:${IMAP[$srv]}" --count "$IDLE" --users 16 --password "$PASSWORD" \
        < "$fifo" > "$WORK/idle.$srv.out" &
    lpid=$!
    exec 7> "$fifo"
    for _ in $(seq 1 600); do
        grep -q ready "$WORK/idle.$srv.out" 2>/dev/null && break
        sleep 0.5
    done
    sleep 2
    after=$(memory "${PID[$srv]}")
    exec 7>&-
    wait "$lpid" || true
    record "idle IMAP connections (memory)" "$srv" 1 \
        "{\"connections\": $IDLE, \"before\": $before, \"after\": $after}"
done

python3 benches/peers/report.py "$RES" "$QUICK" \
    "$(dovecot --version | cut -d' ' -f1)" "$(postconf -h mail_version 2>/dev/null || echo '?')"
