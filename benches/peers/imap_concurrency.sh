#!/usr/bin/env bash
# IMAP under concurrent sessions, tiermail beside Dovecot (Maildir,
# mail_fsync = always) in one run, same load from tiermail-load:
#
#   throughput  the stress checker's commands per second with 10 clients
#               (logging out every 5 rounds, and staying logged in), 3
#               alternating rounds of 30 s, the mailbox held near STEADY
#               messages (1,000) so that both servers are measured on the
#               same mailbox size however fast they are
#   latency     on one 100,000-message mailbox: STATUS (MESSAGES UNSEEN),
#               NOOP after another session's flag change, SEARCH UNSEEN;
#               and SELECT on 1,000 messages
#   stress      the stress checker: 10 and 50 clients on 1 and 10
#               mailboxes, STRESS_SECS each (600 by default); with 10
#               clients tiermail and Dovecot run side by side, with 50 one
#               after the other, mailboxes held near STEADY too (only
#               violations and stalls count here)
#   (bench = throughput latency)
#
#   bash benches/peers/imap_concurrency.sh                 # every phase
#   PHASES=bench BIG=20000 bash benches/peers/imap_concurrency.sh
#   PHASES=stress STRESS_CLIENTS=10 bash benches/peers/imap_concurrency.sh
#   PHASES=stress STRESS_CLIENTS=50 STRESS_SERVERS=tiermail bash benches/peers/imap_concurrency.sh
#
# Results: one JSON object per line on stdout and in
# target/imap-concurrency.jsonl. Every process started is stopped on exit.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
PHASES=${PHASES:-bench stress}
PHASES=${PHASES//bench/throughput latency}
STEADY=${STEADY:-1000}
STRESS_SECS=${STRESS_SECS:-600}
STRESS_CLIENTS=${STRESS_CLIENTS:-10 50}
STRESS_SERVERS=${STRESS_SERVERS:-tiermail dovecot}
BIG=${BIG:-100000}
PASSWORD=benchpw

# shellcheck source=benches/peers/lib.sh
. benches/peers/lib.sh
peers_install dovecot-imapd dovecot-lmtpd
# Dovecot on Maildir (what most Dovecot sites run).
peers_start imapc 64 "maildir:@WORK@/d/mail/%d/%n"
OUT=$ROOT/target/imap-concurrency.jsonl
: > "$OUT"
record() { # what server json
    local line="{\"what\": \"$1\", \"server\": \"$2\", \"result\": $3}"
    echo "$line" | tee -a "$OUT"
}
user() { echo "bench$1@example.test"; }

stress() { # server user clients mailboxes seconds relogin
    "$LOAD" imap-stress --addr "127.0.0.1:${IMAP[$1]}" --user "$(user "$2")" \
        --password "$PASSWORD" --clients "$3" --mailboxes "$4" --seconds "$5" \
        --relogin "$6" --pipeline 4 --seed "$2" --steady "$STEADY"
}

if [[ " $PHASES " == *" throughput "* ]]; then
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
fi

if [[ " $PHASES " == *" latency "* ]]; then
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
            [[ " $STRESS_CLIENTS " == *" $clients "* ]] || continue
            if ((clients <= 10)); then
                jobs=()
                for srv in $STRESS_SERVERS; do
                    stress "$srv" "$u" "$clients" "$boxes" "$STRESS_SECS" 0 > "$WORK/stress.$srv" &
                    jobs+=("$!")
                done
                wait "${jobs[@]}"
            else
                for srv in $STRESS_SERVERS; do
                    stress "$srv" "$u" "$clients" "$boxes" "$STRESS_SECS" 0 > "$WORK/stress.$srv"
                done
            fi
            for srv in $STRESS_SERVERS; do
                record "stress, $clients clients, $boxes mailboxes, ${STRESS_SECS} s" "$srv" \
                    "$(cat "$WORK/stress.$srv")"
            done
        done
    done
fi
