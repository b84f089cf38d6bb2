#!/usr/bin/env bash
# Reruns every benchmark recorded in BENCHMARKS.md, each against a relay that loadtest
# starts itself (--spawn-relay, release build). JSON reports go to $OUT (default
# bench-results/). Run from the repository root:  bash loadtest/bench.sh [name...]
# Names: throughput, paths, concurrent, concurrent-light, setup-rate, idle, slow-reader, redirect,
# direct-path, and (only when named) e2e, relay-ab, and (for a machine with many cores, BENCHMARKS.md
# section 8) setup-sockets, concurrent-baseline. Every run is protected end to end (the default) unless
# it says --no-e2e.
#
# Environment: BIN=folder with prebuilt `relay` and `loadtest` (skips the build: a machine
# without a toolchain); RELAY_CPUS / LT_CPUS = taskset core lists that pin the relay and
# the load generator apart (e.g. RELAY_CPUS=0-7 LT_CPUS=8-15).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench-results}
mkdir -p "$OUT"
if [ -z "${BIN:-}" ]; then
  cargo build --release --locked --bins --quiet
  BIN=target/release
fi
BIN=$(cd "$BIN" && pwd)
LT=("$BIN/loadtest")
RELAY=("--relay-bin" "$BIN/relay")
if [ -n "${RELAY_CPUS:-}" ]; then
  printf '#!/bin/sh\nexec taskset -c %s "%s" "$@"\n' "$RELAY_CPUS" "$BIN/relay" > "$OUT/relay-pinned"
  chmod +x "$OUT/relay-pinned"
  RELAY=("--relay-bin" "$(cd "$OUT" && pwd)/relay-pinned")
fi
if [ -n "${LT_CPUS:-}" ]; then
  LT=(taskset -c "$LT_CPUS" "$BIN/loadtest")
fi

run() { # name, then loadtest arguments
  local name=$1; shift
  echo "=== $name: loadtest $*"
  "${LT[@]}" --spawn-relay "${RELAY[@]}" --no-progress --json "$OUT/$name.json" "$@" \
    || echo "($name: some sessions failed; see the report)"
}

names=("$@")
selected() { [ ${#names[@]} -eq 0 ] && return 0; for n in "${names[@]}"; do [ "$n" = "$1" ] && return 0; done; return 1; }

# 1. One session, maximum screen throughput, relayed and peer to peer in the same run.
if selected throughput; then
  for i in 1 2 3; do
    run "throughput-$i" --sessions 1 --duration 10 --screen-kbit 0 --frame-bytes 65536 \
      --input-rate 0 --baseline direct
  done
fi

# 1b. The packet path against the stream path and a direct QUIC connection (BENCHMARKS.md
# "The packet path"): one session as fast as flow control allows, then 20 sessions at
# 20 Mbit/s each (about 400 Mbit/s offered, coturn's comparison: loadtest/coturn.sh), then
# 1,000 idle sessions (relay memory per session). The packet path's direct baseline runs
# without the SDK's sealing (--no-e2e): like the peer connection, it is QUIC with TLS only.
if selected paths; then
  for i in 1 2 3; do
    run "packet-one-$i" --sessions 1 --duration 10 --screen-kbit 0 --frame-bytes 65536 \
      --input-rate 0 --baseline direct --no-e2e --data-path packet
    run "stream-one-$i" --sessions 1 --duration 10 --screen-kbit 0 --frame-bytes 65536 \
      --input-rate 0 --baseline direct --data-path stream
  done
  for path in packet stream; do
    run "$path-400mbit" --sessions 20 --ramp 50 --duration 10 --screen-kbit 20000 \
      --frame-bytes 16384 --input-rate 0 --data-path "$path"
    run "$path-idle" --sessions 1000 --ramp 200 --duration 5 --idle --data-path "$path"
  done
  if command -v turnserver >/dev/null; then
    bash loadtest/coturn.sh 40 10000 1 | tee "$OUT/coturn-400mbit.txt"
    bash loadtest/coturn.sh 40 10000 0 | tee "$OUT/coturn-max.txt"
  fi
fi

# 2. 1,000 concurrent sessions at 2 Mbit/s screen and 50 input events/s.
if selected concurrent; then
  run concurrent --sessions 1000 --ramp 100 --duration 30 --screen-kbit 2000 --input-rate 50
fi
# 2b. The same session count at a tenth of the screen rate (what 2 cores can carry).
if selected concurrent-light; then
  run concurrent-light --sessions 1000 --ramp 100 --duration 30 --screen-kbit 200 --input-rate 50
fi

# 3. Session setup rate: idle sessions set up at rising rates; see where setup p99 doubles.
if selected setup-rate; then
  for rate in 50 100 200 400 800 1600; do
    run "setup-$rate" --sessions $((rate * 5)) --ramp "$rate" --duration 0 --idle
  done
fi

# 4. 10,000 idle paired sessions: relay memory per session.
if selected idle; then
  run idle --sessions 10000 --ramp 500 --duration 10 --idle
fi

# 5. Slow readers under load: 20 of 200 sessions never read their screen until the end.
if selected slow-reader; then
  run slow-reader --sessions 200 --ramp 100 --duration 20 --screen-kbit 2000 --input-rate 50 \
    --stalled 20
fi

# 6. What a redirect costs: the same idle setups with sharers joining through another node
#    of a two-node cluster (every join redirected) and with everyone on one node.
if selected redirect; then
  for round in 1 2 3; do
    run "redirect-single-$round" --sessions 200 --ramp 50 --duration 2 --idle
    run "redirect-cluster-$round" --sessions 200 --ramp 50 --duration 2 --idle --nodes 2
  done
fi

# 7. Direct paths: the same 100 sessions at 2 Mbit/s and 50 input events/s, relayed and with
#    --direct-path (on loopback every attempt succeeds): relay CPU and input round trip.
if selected direct-path; then
  for round in 1 2; do
    run "direct-path-relayed-$round" --sessions 100 --ramp 50 --duration 10 --screen-kbit 2000 --input-rate 50
    run "direct-path-direct-$round" --sessions 100 --ramp 50 --duration 10 --screen-kbit 2000 --input-rate 50 --direct-path
  done
fi

# 8. Many cores (run with RELAY_CPUS / LT_CPUS): setups with one UDP socket against the
#    default (one per CPU), and 1,000 sessions at 2 Mbit/s with the direct baseline, so that
#    what the relay adds to the input round trip is measured in one run.
if [ ${#names[@]} -gt 0 ] && selected setup-sockets; then
  for sockets in 1 0; do
    for rate in 500 1000 1500 2000; do
      run "setup-$rate-sockets-$sockets" --sessions $((rate * 5)) --ramp "$rate" --duration 0 \
        --idle --relay-udp-sockets "$sockets"
    done
  done
fi
if [ ${#names[@]} -gt 0 ] && selected concurrent-baseline; then
  for round in 1 2; do
    run "concurrent-baseline-$round" --sessions 1000 --ramp 200 --duration 30 --screen-kbit 2000 \
      --input-rate 50 --baseline direct
  done
fi

# 9. What end-to-end protection costs: one session's throughput and 1,000 sessions' input
#    round trip, with each suite and without protection (--no-e2e), interleaved. Only when
#    named: bash loadtest/bench.sh e2e
if [ ${#names[@]} -gt 0 ] && selected e2e; then
  for round in 1 2; do
    for e2e in "--e2e-suite chacha20" "--e2e-suite aes256gcm" "--no-e2e"; do
      tag=${e2e##* }; tag=${tag#--}
      # shellcheck disable=SC2086
      run "e2e-throughput-$tag-$round" --sessions 1 --duration 10 --screen-kbit 0 \
        --frame-bytes 65536 --input-rate 0 --baseline direct $e2e
      # shellcheck disable=SC2086
      run "e2e-concurrent-$tag-$round" --sessions 1000 --ramp 100 --duration 30 \
        --screen-kbit 200 --input-rate 50 $e2e
    done
  done
fi

# 10. Two relay builds side by side (only when named; RELAY_A and RELAY_B are paths to two
#     `relay` binaries, e.g. before and after a change): idle setups at 100/s and 200/s,
#     interleaved A/B, four rounds. bash loadtest/bench.sh relay-ab. The loadtest binary
#     (BIN) must write a spawned-relay config both relays accept: a loadtest from before
#     require_end_to_end cannot drive a newer relay's defaults, a newer one writes a setting
#     older relays refuse, so use the older build's loadtest against both.
if [ ${#names[@]} -gt 0 ] && selected relay-ab; then
  : "${RELAY_A:?set RELAY_A to a relay binary}" "${RELAY_B:?set RELAY_B to a relay binary}"
  for round in 1 2 3 4; do
    for rate in 100 200; do
      for which in A B; do
        bin_var="RELAY_$which"
        echo "=== relay-ab-$which-$rate-$round: loadtest --relay-bin ${!bin_var} --sessions $((rate * 5)) --ramp $rate --duration 0 --idle"
        "${LT[@]}" --spawn-relay --relay-bin "${!bin_var}" --no-progress \
          --json "$OUT/relay-ab-$which-$rate-$round.json" \
          --sessions $((rate * 5)) --ramp "$rate" --duration 0 --idle \
          || echo "(relay-ab-$which-$rate-$round: some sessions failed; see the report)"
      done
    done
  done
fi

