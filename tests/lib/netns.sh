# shellcheck shell=bash
# A network namespace for partition faults: a process started inside it (the applier, through
# APPLIER_WRAP) reaches the host only over veth pairs, one per host-side address, and a pair can be
# cut (every packet dropped both ways, connections left open as a real partition leaves them) and
# mended. Root only; the kernel needs veth and the pfifo qdisc (no netem: not every kernel has it).
#
#   netns_usable                    prints why not and fails, unless root with ip and tc
#   netns_create N                  namespace + N pairs; NETNS_NAME, NETNS_HOST_IP[i], NETNS_PEER_IP[i]
#                                   (i = 1..N); a free 10.x.y.0/24 is chosen
#   netns_cut I / netns_mend I      partition pair I / end it
#   netns_destroy                   remove the namespace and its pairs (also safe when none exists)
NETNS_NAME=""
NETNS_N=0
declare -A NETNS_HOST_IP NETNS_PEER_IP NETNS_HOST_DEV NETNS_PEER_DEV

netns_usable() {
    if [ "$(id -u)" != 0 ]; then echo "not root"; return 1; fi
    # shellcheck disable=SC2015 # the message when either is missing
    command -v ip >/dev/null && command -v tc >/dev/null || { echo "ip or tc (iproute2) missing"; return 1; }
}

netns_create() {
    local n=$1 i tag net tries=0 used
    tag=$(printf '%05d' $(($$ % 100000)))
    NETNS_NAME=atxsoak$tag
    used=$(ip -4 -o addr show)
    while :; do
        tries=$((tries + 1))
        [ $tries -gt 50 ] && { echo "netns_create: no free 10.x.y.0/24" >&2; return 1; }
        net=10.$((200 + RANDOM % 50)).$((RANDOM % 256))
        grep -q " $net\." <<<"$used" || break
    done
    ip netns add "$NETNS_NAME" || return 1
    ip netns exec "$NETNS_NAME" ip link set lo up || return 1
    for i in $(seq 1 "$n"); do
        NETNS_HOST_DEV[$i]=atxh$tag$i
        NETNS_PEER_DEV[$i]=atxp$tag$i
        NETNS_HOST_IP[$i]=$net.$((4 * i + 1))
        NETNS_PEER_IP[$i]=$net.$((4 * i + 2))
        ip link add "${NETNS_HOST_DEV[$i]}" type veth peer name "${NETNS_PEER_DEV[$i]}" &&
            ip link set "${NETNS_PEER_DEV[$i]}" netns "$NETNS_NAME" &&
            ip addr add "${NETNS_HOST_IP[$i]}/30" dev "${NETNS_HOST_DEV[$i]}" &&
            ip link set "${NETNS_HOST_DEV[$i]}" up &&
            ip netns exec "$NETNS_NAME" ip addr add "${NETNS_PEER_IP[$i]}/30" dev "${NETNS_PEER_DEV[$i]}" &&
            ip netns exec "$NETNS_NAME" ip link set "${NETNS_PEER_DEV[$i]}" up || return 1
        NETNS_N=$i
    done
}

# A queue that holds no packet drops every one; TCP retransmits what was sent once it is removed.
netns_cut() {
    tc qdisc replace dev "${NETNS_HOST_DEV[$1]}" root pfifo limit 0 &&
        ip netns exec "$NETNS_NAME" tc qdisc replace dev "${NETNS_PEER_DEV[$1]}" root pfifo limit 0
}

netns_mend() {
    local rc=0
    tc qdisc del dev "${NETNS_HOST_DEV[$1]}" root 2>/dev/null || rc=1
    ip netns exec "$NETNS_NAME" tc qdisc del dev "${NETNS_PEER_DEV[$1]}" root 2>/dev/null || rc=1
    return $rc
}

netns_destroy() {
    local i
    [ -n "$NETNS_NAME" ] || return 0
    for i in $(seq 1 "$NETNS_N"); do ip link del "${NETNS_HOST_DEV[$i]}" 2>/dev/null; done
    ip netns del "$NETNS_NAME" 2>/dev/null
    NETNS_NAME=""
    NETNS_N=0
}
