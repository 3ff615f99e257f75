# Set-up shared by the side-by-side benchmarks (sourced, not run): the peer
# packages, the release build, a work directory removed on exit, free
# loopback ports, and tiermail and Dovecot started on them with the same
# users. After `peers_start`:
#   $WORK, $TIERMAIL, $LOAD, $PASSWORD, $D_UID, $D_GID
#   LMTP[srv], IMAP[srv], PID[srv] for srv in tiermail dovecot
# Every process started is stopped by pid on exit.

# peers_install PACKAGE...: installs the Debian packages that are missing.
peers_install() {
    local need=() p
    for p in "$@"; do
        dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
    done
    if ((${#need[@]})); then
        local sudo=""
        [ "$(id -u)" -eq 0 ] || sudo="sudo"
        echo "installing: ${need[*]}"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${need[@]}"
    fi
    ulimit -n 20000 2>/dev/null || true
}

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
    for _ in $(seq 1 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "nothing listens on $1" >&2
    return 1
}

PIDS=()
peers_cleanup() {
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    sleep 1
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    [ -n "${WORK:-}" ] && rm -rf "$WORK"
}

# peers_start PREFIX USERS [MAIL_LOCATION]: builds, makes $WORK under
# target/, creates USERS users (bench0..) with $PASSWORD for both servers,
# and starts tiermail and Dovecot. MAIL_LOCATION replaces the mail_location
# of dovecot.conf.in ("maildir:$WORK/d/mail/%d/%n" for Maildir); @WORK@ in
# it stands for the work directory.
peers_start() {
    local prefix=$1 users=$2 location=${3:-}
    PASSWORD=${PASSWORD:-benchpw}
    cargo build --release --locked --bins 2>&1 | tail -1
    TIERMAIL=$ROOT/target/release/tiermail
    LOAD=$ROOT/target/release/tiermail-load
    mkdir -p target
    WORK=$(mktemp -d -p "$ROOT/target" "$prefix.XXXXXX")
    chmod 755 "$WORK"
    trap peers_cleanup EXIT

    mkdir -p "$WORK/t" "$WORK/d/mail" "$WORK/d/alt"
    "$LOAD" users --count "$users" --password "$PASSWORD" \
        --tiermail "$WORK/t/users.toml" --dovecot "$WORK/d/passwd"

    local t_smtp t_lmtp t_imap d_lmtp d_imap
    t_smtp=$(port); t_lmtp=$(port); t_imap=$(port)
    sed -e "s|@DIR@|$WORK/t|g" -e "s|@SMTP_PORT@|$t_smtp|" -e "s|@LMTP_PORT@|$t_lmtp|" \
        -e "s|@IMAP_PORT@|$t_imap|" "$ROOT/benches/peers/tiermail.toml.in" > "$WORK/t/tiermail.toml"
    "$TIERMAIL" --config "$WORK/t/tiermail.toml" serve > "$WORK/t/ready" 2> "$WORK/t/log" &
    local t_pid=$!
    PIDS+=("$t_pid")
    wait_port "$t_imap"

    d_lmtp=$(port); d_imap=$(port)
    D_UID=$(id -u nobody); D_GID=$(getent group nogroup | cut -d: -f3)
    chown "$D_UID:$D_GID" "$WORK/d/mail" "$WORK/d/alt"
    local edits=(-e "s|@DIR@|$WORK/d|g" -e "s|@LMTP_PORT@|$d_lmtp|" -e "s|@IMAP_PORT@|$d_imap|"
        -e "s|@UID@|$D_UID|" -e "s|@GID@|$D_GID|")
    [ -n "$location" ] && edits+=(-e "s|^mail_location = .*|mail_location = ${location//@WORK@/$WORK}|")
    sed "${edits[@]}" "$ROOT/benches/peers/dovecot.conf.in" > "$WORK/d/dovecot.conf"
    dovecot -c "$WORK/d/dovecot.conf"
    wait_port "$d_imap"
    local d_pid
    d_pid=$(cat "$WORK/d/run/master.pid")
    PIDS+=("$d_pid")

    declare -gA LMTP=([tiermail]=$t_lmtp [dovecot]=$d_lmtp)
    declare -gA IMAP=([tiermail]=$t_imap [dovecot]=$d_imap)
    declare -gA PID=([tiermail]=$t_pid [dovecot]=$d_pid)
}
