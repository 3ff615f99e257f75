#!/usr/bin/env bash
# IMAP under concurrent sessions, tiermail beside Dovecot (Maildir,
# mail_fsync = always) in one run, same load from tiermail-load:
#
#   bench   throughput of the stress checker with 10 clients (logging out
#           every 5 rounds, and staying logged in), 3 alternating rounds;
#           latencies on one 100,000-message mailbox (STATUS (MESSAGES
#           UNSEEN), NOOP after another session's flag change, SEARCH
#           UNSEEN) and SELECT on 1,000 messages
#   stress  the stress checker: 10 and 50 clients on 1 and 10 mailboxes,
#           STRESS_SECS each (600 by default); with 10 clients tiermail and
#           Dovecot run side by side, with 50 one after the other (only
#           violations and stalls count here)
#
#   bash benches/peers/imap_concurrency.sh                 # both phases
#   PHASES=bench BIG=20000 bash benches/peers/imap_concurrency.sh
#
# Results: one JSON object per line on stdout and in
# target/imap-concurrency.jsonl. Every process started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PHASES=${PHASES:-bench stress}
STRESS_SECS=${STRESS_SECS:-600}
BIG=${BIG:-100000}
PASSWORD=benchpw

need=()
for p in dovecot-imapd dovecot-lmtpd; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
fi
ulimit -n 20000 2>/dev/null || true

cargo build --release --locked --bins 2>&1 | tail -1
TIERMAIL=$ROOT/target/release/tiermail
LOAD=$ROOT/target/release/tiermail-load

mkdir -p target
WORK=$(mktemp -d -p "$ROOT/target" imapc.XXXXXX)
chmod 755 "$WORK"
OUT=$ROOT/target/imap-concurrency.jsonl
: > "$OUT"
PIDS=()
cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2; return 1
}
record() { # what server json
    local line="{\"what\": \"$1\", \"server\": \"$2\", \"result\": $3}"
    echo "$line" | tee -a "$OUT"
}
user() { echo "bench$1@example.test"; }

mkdir -p "$WORK/t" "$WORK/d/mail"
"$LOAD" users --count 64 --password "$PASSWORD" --tiermail "$WORK/t/users.toml" --dovecot "$WORK/d/passwd"

T_SMTP=$(port); T_LMTP=$(port); T_IMAP=$(port)
sed -e "s|@DIR@|$WORK/t|g" -e "s|@SMTP_PORT@|$T_SMTP|" -e "s|@LMTP_PORT@|$T_LMTP|" \
    -e "s|@IMAP_PORT@|$T_IMAP|" benches/peers/tiermail.toml.in > "$WORK/t/tiermail.toml"
"$TIERMAIL" --config "$WORK/t/tiermail.toml" serve > "$WORK/t/ready" 2> "$WORK/t/log" &
PIDS+=("$!")
wait_port "$T_IMAP"

D_LMTP=$(port); D_IMAP=$(port)
D_UID=$(id -u nobody); D_GID=$(getent group nogroup | cut -d: -f3)
mkdir -p "$WORK/d/alt"
chown "$D_UID:$D_GID" "$WORK/d/mail" "$WORK/d/alt"
# The peers template with Maildir storage (what most Dovecot sites run).
sed -e "s|@DIR@|$WORK/d|g" -e "s|@LMTP_PORT@|$D_LMTP|" -e "s|@IMAP_PORT@|$D_IMAP|" \
    -e "s|@UID@|$D_UID|" -e "s|@GID@|$D_GID|" \
    -e "s|^mail_location = .*|mail_location = maildir:$WORK/d/mail/%d/%n|" \
    benches/peers/dovecot.conf.in > "$WORK/d/dovecot.conf"
dovecot -c "$WORK/d/dovecot.conf"
wait_port "$D_IMAP"
PIDS+=("$(cat "$WORK/d/run/master.pid")")

declare -A LMTP=([tiermail]=$T_LMTP [dovecot]=$D_LMTP)
declare -A IMAP=([tiermail]=$T_IMAP [dovecot]=$D_IMAP)

stress() { # server user clients mailboxes seconds relogin
    "$LOAD" imap-stress --addr "127.0.0.1:${IMAP[$1]}" --user "$(user "$2")" \
        --password "$PASSWORD" --clients "$3" --mailboxes "$4" --seconds "$5" \
        --relogin "$6" --pipeline 4 --seed "$2"
}

if [[ " $PHASES " == *" bench "* ]]; then
    echo "== stress-checker throughput, 10 clients, 3 alternating rounds of 30 s"
    for r in 1 2 3; do
        for relogin in 5 0; do
            for srv in tiermail dovecot; do
                u=$((20 + r * 2 + (relogin == 0)))
                record "stress throughput, 10 clients, relogin $relogin" "$srv" \
                    "$(stress "$srv" "$u" 10 1 30 "$relogin")"
            done
        done
    done

    echo "== filling: $BIG messages for bench0, 1000 for bench1"
    # tiermail over LMTP; Dovecot's Maildir directly (the same corpus
    # messages): its LMTP slows to a few messages a second once a folder
    # holds tens of thousands (uidlist lock waits), and the fill is not
    # what is measured. Dovecot indexes them at the first SELECT, done
    # before any timing.
    "$LOAD" deliver --addr "127.0.0.1:${LMTP[tiermail]}" --lmtp --sessions 4 --messages "$BIG" \
        --size 0 --only-user 0 --seed 3 > /dev/null
    "$LOAD" maildir --dir "$WORK/d/mail/example.test/bench0" --messages "$BIG" --seed 3 > /dev/null
    chown -R "$D_UID:$D_GID" "$WORK/d/mail"
    for srv in tiermail dovecot; do
        "$LOAD" deliver --addr "127.0.0.1:${LMTP[$srv]}" --lmtp --sessions 4 --messages 1000 \
            --size 0 --only-user 1 --seed 4 > /dev/null
        # Warm-up: one SELECT and STATUS of each (Dovecot builds its index).
        "$LOAD" probe --addr "127.0.0.1:${IMAP[$srv]}" --user 0 --password "$PASSWORD" \
            --rounds 1 --only select,status > /dev/null
    done
    echo "== latencies"
    for r in 1 2 3; do
        for srv in tiermail dovecot; do
            record "$BIG messages: STATUS, NOOP after a change, SEARCH UNSEEN" "$srv" \
                "$("$LOAD" probe --addr "127.0.0.1:${IMAP[$srv]}" --user 0 --password "$PASSWORD" \
                    --rounds 200 --only status,noop,search)"
            record "1000 messages: SELECT" "$srv" \
                "$("$LOAD" probe --addr "127.0.0.1:${IMAP[$srv]}" --user 1 --password "$PASSWORD" \
                    --rounds 300 --only select)"
        done
    done
fi

if [[ " $PHASES " == *" stress "* ]]; then
    # Ten clients of each server fit on two cores side by side; fifty of
    # each do not (both then miss the checker's 5 s deadline), so those
    # cases run one server at a time.
    echo "== stress checker, ${STRESS_SECS} s per case"
    u=40
    for clients in 10 50; do
        for boxes in 1 10; do
            u=$((u + 1))
            if ((clients <= 10)); then
                jobs=()
                for srv in tiermail dovecot; do
                    stress "$srv" "$u" "$clients" "$boxes" "$STRESS_SECS" 0 > "$WORK/stress.$srv" &
                    jobs+=("$!")
                done
                wait "${jobs[@]}"
            else
                for srv in tiermail dovecot; do
                    stress "$srv" "$u" "$clients" "$boxes" "$STRESS_SECS" 0 > "$WORK/stress.$srv"
                done
            fi
            for srv in tiermail dovecot; do
                record "stress, $clients clients, $boxes mailboxes, ${STRESS_SECS} s" "$srv" \
                    "$(cat "$WORK/stress.$srv")"
            done
        done
    done
fi
