#!/bin/sh
# Two "hosts" on one machine: network namespaces shmesh-a (10.99.0.1) and shmesh-b (10.99.0.2)
# joined by a veth pair, each with a private /dev/shm (a mount namespace with its own tmpfs),
# and a shmesh-bridge in each running host-a.toml / host-b.toml. Needs root, iproute2 and
# util-linux (unshare, nsenter, mount).
#
#   cargo build --release -p shmesh-bridge --example bridge
#   sudo examples/bridge/netns.sh        # set up, start the bridges, print what to run
#   sudo examples/bridge/netns.sh down   # stop the bridges, remove everything
#
# The bridges' logs are in $RUN/host-a.log and $RUN/host-b.log; the certificates in
# examples/bridge/certs/ (made once, reused).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}/release
BRIDGE=$TARGET/shmesh-bridge
EXAMPLE=$TARGET/examples/bridge
RUN=/run/shmesh-bridge-demo

down() {
    for host in a b; do
        if [ -f $RUN/$host.pid ]; then
            pid=$(cat $RUN/$host.pid)
            if kill -TERM "$pid" 2>/dev/null; then
                n=0
                while kill -0 "$pid" 2>/dev/null && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
                kill -KILL "$pid" 2>/dev/null || true
            fi
            rm -f $RUN/$host.pid
        fi
        # The mount namespace (and its /dev/shm) goes when nothing holds it any more.
        [ -f $RUN/$host.mnt ] && umount $RUN/$host.mnt 2>/dev/null || true
        ip netns del shmesh-$host 2>/dev/null || true
    done
    if [ -d $RUN ]; then
        umount $RUN 2>/dev/null || true
        rm -rf $RUN
    fi
}

if [ "${1:-up}" = down ]; then
    down
    echo "removed the namespaces shmesh-a and shmesh-b and their /dev/shm"
    exit 0
fi
if [ "${1:-up}" != up ]; then
    echo "usage: $0 [up|down]" >&2
    exit 2
fi
[ "$(id -u)" = 0 ] || { echo "$0: needs root (network and mount namespaces)" >&2; exit 1; }
for f in "$BRIDGE" "$EXAMPLE"; do
    [ -x "$f" ] || {
        echo "$0: $f is missing: run \`cargo build --release -p shmesh-bridge --example bridge\`" >&2
        exit 1
    }
done
if ip netns list | grep -q '^shmesh-[ab]\b'; then
    echo "$0: shmesh-a/shmesh-b exist already: run \`$0 down\` first" >&2
    exit 1
fi

# The mount namespace files live under a private bind mount (as unshare(1) requires).
mkdir -p $RUN
mount --bind $RUN $RUN
mount --make-private $RUN
for host in a b; do
    ip netns add shmesh-$host
    ip -n shmesh-$host link set lo up
    touch $RUN/$host.mnt
    unshare --mount=$RUN/$host.mnt --propagation private \
        sh -c 'mount -t tmpfs -o size=256m,mode=1777 shmesh-shm /dev/shm'
done
ip link add eth0 netns shmesh-a type veth peer name eth0 netns shmesh-b
ip -n shmesh-a addr add 10.99.0.1/24 dev eth0
ip -n shmesh-b addr add 10.99.0.2/24 dev eth0
ip -n shmesh-a link set eth0 up
ip -n shmesh-b link set eth0 up

"$BRIDGE" gen-certs --out "$HERE/certs" host-a host-b >/dev/null
for host in a b; do
    # nsenter execs the bridge: $! is the bridge's pid. It outlives this script.
    nsenter --net=/run/netns/shmesh-$host --mount=$RUN/$host.mnt -- \
        "$BRIDGE" --config "$HERE/host-$host.toml" >$RUN/host-$host.log 2>&1 </dev/null &
    echo $! >$RUN/$host.pid
done
# Wait (up to 10 s) until host-a accepted host-b's connection.
n=0
until grep -q 'connected to host-b' $RUN/host-a.log 2>/dev/null; do
    n=$((n + 1))
    if [ $n -gt 100 ]; then
        echo "$0: the bridges did not connect within 10 s; their logs:" >&2
        cat $RUN/host-a.log $RUN/host-b.log >&2
        exit 1
    fi
    sleep 0.1
done

cat <<MSG
Two hosts are up: shmesh-a (10.99.0.1, host-a.toml) and shmesh-b (10.99.0.2, host-b.toml),
each with its own /dev/shm, their bridges connected over TLS. Logs: $RUN/host-{a,b}.log

Write on A (sends 1000 ticks into demo.ticks and 5 versions of demo.board; Enter ends it):
  nsenter --net=/run/netns/shmesh-a --mount=$RUN/a.mnt -- $EXAMPLE write

Read on B (from the copies the bridge made under the same names):
  nsenter --net=/run/netns/shmesh-b --mount=$RUN/b.mnt -- $EXAMPLE read

See each side's segments:
  nsenter --net=/run/netns/shmesh-b --mount=$RUN/b.mnt -- $TARGET/shmesh ls

Remove everything:
  $0 down
MSG
