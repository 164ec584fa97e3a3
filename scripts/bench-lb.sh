#!/usr/bin/env bash
# The load balancer's benchmark (docs/benchmarks.md, "The load balancer against nginx").
#
# Two fast replicas (nginx answering a fixed body, one worker each), then the same wrk load
# against: one replica directly (the baseline), nginx as a reverse proxy over both, and
# skyform's balancer (src/serve/, built as benches/lb-harness) over both. Prints requests/s
# and p50/p99 latency of each, the latency each proxy adds over the baseline, and skyform's
# throughput as a share of nginx's. Two loads: a saturating one (-c connections, default 64)
# for throughput, where latency is mostly queueing (Little's law), and a light one (-l
# connections, default 4) for the latency a proxy adds. Loopback only; every process it
# starts is stopped on exit.
#
#   scripts/bench-lb.sh [-d SECONDS] [-c CONNECTIONS] [-l LIGHT_CONNECTIONS] [-t WRK_THREADS]
#                       [-w PROXY_WORKERS] [-r ROUNDS]
set -euo pipefail

DURATION=10 CONNS=64 LIGHT=4 WRK_THREADS=2 WORKERS=2 ROUNDS=3
while getopts "d:c:l:t:w:r:" opt; do
  case $opt in
    d) DURATION=$OPTARG ;; c) CONNS=$OPTARG ;; l) LIGHT=$OPTARG ;; t) WRK_THREADS=$OPTARG ;;
    w) WORKERS=$OPTARG ;; r) ROUNDS=$OPTARG ;; *) exit 2 ;;
  esac
done

ROOT=$(cd "$(dirname "$0")/.." && pwd)
BASE_PORT=${LB_BENCH_PORT:-19400}
REPLICA_A=$BASE_PORT REPLICA_B=$((BASE_PORT + 1)) NGINX_LB=$((BASE_PORT + 2)) SKY_LB=$((BASE_PORT + 3))

# wrk and nginx are Debian packages; the machine's root may install them.
missing=()
command -v wrk >/dev/null || missing+=(wrk)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx-light)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}" >&2
  SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
echo "building the balancer (release)..." >&2
CARGO_TARGET_DIR=$TARGET cargo build -q --release --manifest-path "$ROOT/benches/lb-harness/Cargo.toml"
HARNESS=$TARGET/release/lb-harness

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for conf in "$WORK"/*.conf; do
    [ -e "$conf" ] && "$NGINX" -p "$WORK" -c "$conf" -s quit 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# One nginx instance per role, each with its own prefix files, so none shares a worker.
nginx_conf() { # NAME WORKERS SERVER_BLOCK [HTTP_EXTRA]
  cat >"$WORK/$1.conf" <<CONF
worker_processes $2;
pid $WORK/$1.pid;
error_log $WORK/$1.error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/$1.body;
  proxy_temp_path $WORK/$1.proxy;
  fastcgi_temp_path $WORK/$1.fcgi;
  uwsgi_temp_path $WORK/$1.uwsgi;
  scgi_temp_path $WORK/$1.scgi;
  keepalive_requests 10000000;
  keepalive_timeout 120s;
  ${4:-}
  $3
}
CONF
  "$NGINX" -p "$WORK" -c "$WORK/$1.conf"
}

BODY='version=bench replica answer, a short JSON-sized body of about one hundred bytes......\n'
nginx_conf replica-a 1 "server { listen 127.0.0.1:$REPLICA_A; location / { default_type text/plain; return 200 '$BODY'; } }"
nginx_conf replica-b 1 "server { listen 127.0.0.1:$REPLICA_B; location / { default_type text/plain; return 200 '$BODY'; } }"
# nginx as a production reverse proxy: kept-alive upstream connections, least connections.
nginx_conf proxy "$WORKERS" "server {
    listen 127.0.0.1:$NGINX_LB;
    location / {
      proxy_pass http://replicas;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For \$remote_addr;
    }
  }" "upstream replicas {
    least_conn;
    server 127.0.0.1:$REPLICA_A;
    server 127.0.0.1:$REPLICA_B;
    keepalive 256;
    keepalive_requests 10000000;
  }"

"$HARNESS" --listen "127.0.0.1:$SKY_LB" --upstream "127.0.0.1:$REPLICA_A" \
  --upstream "127.0.0.1:$REPLICA_B" --policy least_load --threads "$WORKERS" >"$WORK/sky.out" 2>&1 &
PIDS+=($!)

for port in $REPLICA_A $REPLICA_B $NGINX_LB $SKY_LB; do
  for _ in $(seq 100); do
    if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then break; fi
    sleep 0.05
  done
done
for port in $REPLICA_A $NGINX_LB $SKY_LB; do
  curl -fsS "http://127.0.0.1:$port/" >/dev/null || { echo "port $port does not answer" >&2; exit 1; }
done

# wrk's --latency report in microseconds: "rps p50 p99".
to_us() { awk '{ v=$1; if (v ~ /us$/) { sub(/us/,"",v); print v } else if (v ~ /ms$/) { sub(/ms/,"",v); print v*1000 } else if (v ~ /s$/) { sub(/s/,"",v); print v*1000000 } }'; }
measure() { # PORT SECONDS CONNECTIONS
  local out threads=$WRK_THREADS
  [ "$3" -lt "$threads" ] && threads=$3
  out=$(wrk -t"$threads" -c"$3" -d"$2"s --latency "http://127.0.0.1:$1/")
  if grep -q "Non-2xx\|Socket errors" <<<"$out"; then echo "errors from port $1:" >&2; echo "$out" >&2; fi
  local rps p50 p99
  rps=$(awk '/^Requests\/sec:/ { print $2 }' <<<"$out")
  p50=$(awk '$1 == "50%" { print $2 }' <<<"$out" | to_us)
  p99=$(awk '$1 == "99%" { print $2 }' <<<"$out" | to_us)
  echo "$rps $p50 $p99"
}
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{ a[NR] = $1 } END { print (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }

NAMES=(direct nginx skyform)
declare -A PORT=([direct]=$REPLICA_A [nginx]=$NGINX_LB [skyform]=$SKY_LB)
for name in "${NAMES[@]}"; do measure "${PORT[$name]}" 2 "$CONNS" >/dev/null; done   # warm-up

echo "$(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg) before; proxies with $WORKERS workers; median of $ROUNDS rounds of ${DURATION}s"
for phase in "saturating:$CONNS" "light:$LIGHT"; do
  conns=${phase#*:}
  declare -A RPS=() P50=() P99=()
  # Rounds alternate the targets so that drift in the machine's load hits all alike.
  for round in $(seq "$ROUNDS"); do
    for name in "${NAMES[@]}"; do
      read -r rps p50 p99 < <(measure "${PORT[$name]}" "$DURATION" "$conns")
      RPS[$name]+="$rps " P50[$name]+="$p50 " P99[$name]+="$p99 "
      echo "  ${phase%%:*} round $round $name: $rps req/s, p50 ${p50} us, p99 ${p99} us" >&2
    done
  done
  echo
  echo "${phase%%:*} load: wrk -c$conns"
  printf '%-34s %10s %9s %9s %15s %15s\n' target "req/s" "p50 ms" "p99 ms" "added p50 ms" "added p99 ms"
  base50=$(median <<<"${P50[direct]}") base99=$(median <<<"${P99[direct]}")
  for name in "${NAMES[@]}"; do
    rps=$(median <<<"${RPS[$name]}") p50=$(median <<<"${P50[$name]}") p99=$(median <<<"${P99[$name]}")
    case $name in
      direct) label="one replica, directly" ;;
      nginx) label="nginx $($NGINX -v 2>&1 | cut -d/ -f2) over two replicas" ;;
      skyform) label="skyform balancer over two replicas" ;;
    esac
    awk -v l="$label" -v r="$rps" -v a="$p50" -v b="$p99" -v a0="$base50" -v b0="$base99" -v d="$name" \
      'BEGIN { if (d == "direct") { x = "-"; y = "-" } else { x = sprintf("%.3f", (a - a0) / 1000); y = sprintf("%.3f", (b - b0) / 1000) }
               printf "%-34s %10.0f %9.3f %9.3f %15s %15s\n", l, r, a / 1000, b / 1000, x, y }'
  done
  awk -v s="$(median <<<"${RPS[skyform]}")" -v n="$(median <<<"${RPS[nginx]}")" \
    -v s50="$(median <<<"${P50[skyform]}")" -v n50="$(median <<<"${P50[nginx]}")" -v b50="$base50" \
    'BEGIN { printf "skyform / nginx throughput: %.0f%%; added p50: skyform %.3f ms, nginx %.3f ms\n", 100 * s / n, (s50 - b50) / 1000, (n50 - b50) / 1000 }'
done
echo
echo "targets: >= 70% of nginx's throughput (saturating load), < 0.5 ms added p50 (light load)"
