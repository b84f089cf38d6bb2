#!/usr/bin/env bash
# coturn's turnserver on loopback, driven by its own turnutils_uclient (client to client
# through the server, UDP relay): the relay CPU per GB delivered and the loss, to compare
# with the relay's packet path (BENCHMARKS.md "The packet path"). Needs coturn
# (`apt-get install coturn`). Usage: bash loadtest/coturn.sh [clients] [messages] [interval-ms]
# Defaults: 40 clients, 10,000 messages of 1,200 bytes each, one per millisecond per client
# (about 384 Mbit/s offered); interval 0 sends as fast as uclient can.
set -euo pipefail
CLIENTS=${1:-40}; MESSAGES=${2:-10000}; INTERVAL=${3:-1}; LEN=1200; PORT=34780
command -v turnserver >/dev/null || { echo "coturn is not installed (apt-get install coturn)"; exit 2; }
LOG=$(mktemp); trap 'kill $TURN 2>/dev/null; rm -f $LOG' EXIT
turnserver -n --no-tls --no-dtls -L 127.0.0.1 --listening-port $PORT --relay-ip 127.0.0.1 \
  --min-port 40000 --max-port 49999 --lt-cred-mech --user bench:bench --realm bench --no-cli \
  --allow-loopback-peers --log-file stdout --simple-log --no-stdout-log >/dev/null 2>&1 &
TURN=$!
for _ in $(seq 50); do ss -lun | grep -q ":$PORT " && break; sleep 0.1; done
cpu() { awk '{print $14+$15}' /proc/$TURN/stat; }
TICKS=$(getconf CLK_TCK)
before=$(cpu); start=$(date +%s.%N)
turnutils_uclient -y -c -X -g -u bench -w bench -p $PORT -m "$CLIENTS" -n "$MESSAGES" -l $LEN \
  -z "$INTERVAL" 127.0.0.1 > "$LOG" 2>&1
end=$(date +%s.%N); after=$(cpu)
recv=$(grep -o 'tot_recv_bytes ~ [0-9]*' "$LOG" | tail -1 | grep -o '[0-9]*$')
sent=$(grep -o 'tot_send_bytes ~ [0-9]*' "$LOG" | tail -1 | grep -o '[0-9]*$')
lost=$(grep -o 'Total lost packets [0-9]* ([0-9.]*%)' "$LOG" | tail -1)
python3 - "$before" "$after" "$TICKS" "$start" "$end" "$recv" "$sent" "$lost" <<'PY'
import sys
b, a, ticks, s, e, recv, sent, lost = sys.argv[1:]
cpu = (int(a) - int(b)) / int(ticks); secs = float(e) - float(s); recv = int(recv); sent = int(sent)
print(f"coturn: {secs:.1f} s, sent {sent/1e6:.1f} MB, delivered {recv/1e6:.1f} MB "
      f"({recv*8/secs/1e6:.0f} Mbit/s), turnserver CPU {cpu:.2f} s = {cpu/(recv/1e9):.2f} s per GB delivered; {lost}")
PY
