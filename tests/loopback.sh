#!/usr/bin/env bash
# TSN on loopback: a coordinator group and N clusters (primary, secondary, sync service each)
# on 127.0.0.1 with free ports, a fresh cert dir and logs under one run dir, and a datastore
# of its own for every process (hosts/<name>/datastore), as if each ran on its own host.
#
#   tests/loopback.sh up     build (release), start everything, print how to start
#                            clients, and stop everything on Ctrl-C
#   tests/loopback.sh test   the same, then a scripted scenario through real tsn_client
#                            processes over pipes (follow, list, timeline, cross-cluster
#                            delivery, kill -9 of a primary and failover); exit 0 only if
#                            everything held
#
# Environment: COORDINATORS (3: a Raft group; 1 for a lone coordinator), CLUSTERS (3), HEARTBEAT_MS (up: 1000, test: 200), PERIOD_MS (-q, 500 / 50),
# RUN_DIR (default run/<timestamp>), PROFILE (release), BIN_DIR (binaries to use instead of
# building; the end-to-end suite sets it to the binaries cargo test just built).
set -euo pipefail

mode=${1:-}
case "$mode" in
  up|test) ;;
  *) echo "usage: $0 up|test" >&2; exit 2 ;;
esac

root=$(cd "$(dirname "$0")/.." && pwd)
clusters=${CLUSTERS:-3}
if [ "$mode" = test ]; then hb=${HEARTBEAT_MS:-200}; q=${PERIOD_MS:-50}; else hb=${HEARTBEAT_MS:-1000}; q=${PERIOD_MS:-500}; fi
profile=${PROFILE:-release}
run=${RUN_DIR:-$root/run/$(date +%Y%m%d-%H%M%S)-$$}
bin=${BIN_DIR:-$root/target/$profile}
mkdir -p "$run/logs"

pids=()
sleeper=
stop_all() {
  local code=$?
  trap - EXIT INT TERM
  [ -n "$sleeper" ] && { kill "$sleeper" 2>/dev/null || true; }
  if [ ${#pids[@]} -gt 0 ]; then
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for _ in $(seq 50); do
      alive=0
      for p in "${pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
      [ $alive = 0 ] && break
      sleep 0.1
    done
    kill -KILL "${pids[@]}" 2>/dev/null || true
    # Only our own processes: a bare `wait` would also wait for anything else.
    wait "${pids[@]}" 2>/dev/null || true
    [ "$mode" = up ] && echo "stopped every process; logs are in $run/logs" >&2
  fi
  exit $code
}
trap stop_all EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ -z "${BIN_DIR:-}" ]; then
  echo "building ($profile)..." >&2
  if [ "$profile" = release ]; then
    cargo build --release --bins --manifest-path "$root/Cargo.toml" >&2
  else
    cargo build --bins --manifest-path "$root/Cargo.toml" >&2
  fi
fi

common=(--cert-dir "$run/certs" --heartbeat-ms "$hb" --bind 127.0.0.1)

wait_file() { # file, seconds
  for _ in $(seq $(( $2 * 20 ))); do
    if [ -s "$1" ] && [ "$(tail -c1 "$1" | od -An -c | tr -d ' ')" = '\n' ]; then cat "$1"; return 0; fi
    sleep 0.05
  done
  echo "timed out waiting for $1" >&2; return 1
}

declare -A pid_of
start() { # name, binary, args...
  local name=$1 binary=$2; shift 2
  rm -f "$run/$name.addr"
  mkdir -p "$run/hosts/$name"
  "$bin/$binary" "$@" "${common[@]}" --datastore "$run/hosts/$name/datastore" \
    --ready-file "$run/$name.addr" 2>>"$run/logs/$name.log" &
  pids+=($!)
  pid_of[$name]=$!
  echo "$name $!" >>"$run/pids"
  if ! wait_file "$run/$name.addr" 20 >/dev/null; then
    echo "$name did not start; the end of its log ($run/logs/$name.log):" >&2
    tail -n 20 "$run/logs/$name.log" >&2
    return 1
  fi
}

coordinators=${COORDINATORS:-3}
free_udp_port() { # a UDP port nothing listens on now
  local p
  for _ in $(seq 200); do
    p=$(( 20000 + RANDOM % 30000 ))
    if [ -z "$(ss -Hunl "sport = :$p" 2>/dev/null)" ]; then echo "$p"; return 0; fi
  done
  echo "no free UDP port found" >&2; return 1
}
free_tcp_port() { # a TCP port nothing listens on now
  local p
  for _ in $(seq 200); do
    p=$(( 20000 + RANDOM % 30000 ))
    if [ -z "$(ss -Htln "sport = :$p" 2>/dev/null)" ]; then echo "$p"; return 0; fi
  done
  echo "no free TCP port found" >&2; return 1
}
# Every coordinator serves the web client's page on a port of its own.
web_urls=()
next_web() { wa="127.0.0.1:$(free_tcp_port)"; web_urls+=("http://$wa/"); }
if [ "$coordinators" = 1 ]; then
  next_web
  start coordinator tsn_coordinator -p 0 --clusters "$clusters" --web-addr "$wa"
  coord=$(cat "$run/coordinator.addr")
else
  ports=()
  for i in $(seq "$coordinators"); do ports+=("$(free_udp_port)"); done
  coord=$(printf '127.0.0.1:%s,' "${ports[@]}"); coord=${coord%,}
  for i in $(seq "$coordinators"); do
    next_web
    start "coordinator-$i" tsn_coordinator -p "${ports[$((i-1))]}" --id "$i" --members "$coord" --clusters "$clusters" --web-addr "$wa"
  done
fi
for c in $(seq "$clusters"); do
  start "primary-$c" tsn_server -c "$coord" -p 0 -i "$c" -t primary
  start "secondary-$c" tsn_server -c "$coord" -p 0 -i "$c" -t secondary
  start "sync-$c" tsn_sync_service -c "$coord" -p 0 -s "$c" -q "$q"
done

status() { "$bin/tsn_status" -c "$coord" --cert-dir "$run/certs"; }
ready=0
for _ in $(seq 100); do
  if [ "$(status 2>/dev/null | grep -c ' Active ')" -ge $(( clusters * 3 )) ]; then ready=1; break; fi
  sleep 0.1
done
[ $ready = 1 ] || { echo "system did not become ready; logs in $run/logs" >&2; exit 1; }

if [ "$mode" = up ]; then
  status || true
  cat <<TXT

TSN is running on loopback ($coordinators coordinators, $clusters clusters, heartbeat ${hb} ms, sync period ${q} ms).
Coordinator group (-c for every client and tool): $coord
Run directory: $run  (hosts/<process>/datastore/, certs/, logs/, pids)

Start a client in another terminal (user N is served by cluster (N % $clusters) + 1):
  $bin/tsn_client -c $coord -p 0 -i 1 --cert-dir $run/certs
Routing tables:
  $bin/tsn_status -c $coord --cert-dir $run/certs
Web client (open in Chromium or Chrome on this host; every coordinator serves it):
  ${web_urls[*]}

Press Ctrl-C to stop everything.
TXT
  # `wait` (unlike a foreground sleep) returns as soon as a signal arrives, so the trap
  # stops everything at once (the sleeper too).
  while true; do sleep 3600 & sleeper=$!; wait "$sleeper"; done
fi

# ---- test mode -------------------------------------------------------------------------
fail() { echo "FAIL: $*" >&2; echo "logs: $run/logs" >&2; exit 1; }
client() { # user, output file; stdin from the caller
  "$bin/tsn_client" -c "$coord" -p 0 -i "$1" --cert-dir "$run/certs" >"$2" 2>>"$run/logs/client-$1.log"
}
clean() { sed 's/^\(Cmd> \)*//' "$1"; }
checks=0
expect_line() { # file, exact line
  clean "$1" | grep -qxF -- "$2" || fail "$1 lacks the line: $2 (got: $(clean "$1" | tr '\n' '|'))"
  checks=$((checks + 1))
}
count_line() { clean "$1" | grep -c -- "$2" || true; }

settle=$(awk "BEGIN { print ($q * 6 + 500) / 1000 }")

# Users 1..3 log in (clusters 2, 3, 1); logins propagate to every cluster.
for u in 1 2 3; do echo "" | client "$u" "$run/login-$u.out"; done
sleep "$settle"
{ echo "FOLLOW 2"; echo "FOLLOW 3"; echo "FOLLOW 2"; echo "FOLLOW 9"; echo "FOLLOW"; echo "HELLO"; } | client 1 "$run/c1-follow.out"
expect_line "$run/c1-follow.out" "Command completed successfully"
expect_line "$run/c1-follow.out" "Input username already exists, command failed"
expect_line "$run/c1-follow.out" "Input username does not exists, command failed"
expect_line "$run/c1-follow.out" "Invalid Input -- No Arguments Given"
expect_line "$run/c1-follow.out" "Invalid Command"
sleep "$settle"
echo LIST | client 2 "$run/c2-list.out"
expect_line "$run/c2-list.out" "All users: 1, 2, 3, "
expect_line "$run/c2-list.out" "Followers: 1, "

# User 1 watches its timeline while 2 (cluster 3) and 3 (cluster 1) post.
{ echo TIMELINE; sleep 12; } | client 1 "$run/c1-timeline.out" &
reader=$!
sleep 1
{ echo TIMELINE; echo "hello from two"; sleep 1; } | client 2 "$run/c2-timeline.out"
# User 3 posts while its cluster's primary is killed: it must fail over and lose nothing.
{
  echo TIMELINE
  for k in $(seq 0 19); do
    echo "three says $k"; sleep 0.1
    if [ "$k" = 8 ]; then kill -KILL "${pid_of[primary-1]}"; fi
  done
} | client 3 "$run/c3-timeline.out" || fail "user 3's client did not get every post acknowledged"
checks=$((checks + 1))
wait "$reader" || true
expect_line "$run/c1-timeline.out" "Now you are in the timeline"
[ "$(count_line "$run/c1-timeline.out" '^2 (.*) >> hello from two$')" = 1 ] || fail "cross-cluster post not shown exactly once"
checks=$((checks + 1))
for k in $(seq 0 19); do
  n=$(count_line "$run/c1-timeline.out" ">> three says $k\$")
  [ "$n" = 1 ] || fail "post 'three says $k' shown $n times on the follower's timeline"
  checks=$((checks + 1))
done
grep -q "Reconnecting to" "$run/logs/client-3.log" || fail "the posting client was not told about the reconnect"
status | grep -A4 "Master table" | grep -q "Inactive" || fail "the killed primary is not marked Inactive"
checks=$((checks + 2))
echo "loopback test: $checks checks passed (run dir $run)"
