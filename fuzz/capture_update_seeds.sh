#!/bin/sh
# Captures the seeds of fuzz/seeds/rpz_update/ from a real BIND (9.18):
# its TCP answers to TSIG-signed UPDATEs sent by nsupdate: NOERROR,
# REFUSED (a type the update-policy does not grant), NXRRSET (a failed
# prerequisite) and NOTAUTH (BADSIG, a wrong secret). Loopback only.
# Run as root: sh fuzz/capture_update_seeds.sh
set -eu
out=$(cd "$(dirname "$0")" && pwd)/seeds/rpz_update
d=$(mktemp -d /dev/shm/rpz-update-seeds.XXXXXX)
port=53531
good=$(printf 0123456789abcdef0123456789abcdef | base64) # the fuzz target's key
bad=$(printf 'another secret of the same size!' | base64)
cat >"$d/named.conf" <<CONF
options { directory "$d"; listen-on port $port { 127.0.0.1; }; listen-on-v6 { none; };
  pid-file "$d/named.pid"; recursion no; dnssec-validation no; };
key "fuzz-key" { algorithm hmac-sha256; secret "$good"; };
zone "rpz.example.com" { type primary; file "$d/rpz.zone";
  update-policy { grant fuzz-key zonesub A TXT CNAME; }; };
CONF
printf '$TTL 60\n@ IN SOA localhost. root.localhost. 1 3600 600 86400 60\n@ IN NS localhost.\n' >"$d/rpz.zone"
echo "key \"fuzz-key\" { algorithm hmac-sha256; secret \"$good\"; };" >"$d/good.key"
echo "key \"fuzz-key\" { algorithm hmac-sha256; secret \"$bad\"; };" >"$d/bad.key"
named -g -c "$d/named.conf" -u root >"$d/named.log" 2>&1 &
named_pid=$!
tcpdump -i lo -U -w "$d/cap.pcap" "tcp port $port" >"$d/tcpdump.log" 2>&1 &
tcpdump_pid=$!
trap 'kill $named_pid $tcpdump_pid 2>/dev/null; wait; rm -rf "$d"' EXIT
sleep 2
up() { printf 'server 127.0.0.1 %s\nzone rpz.example.com\n%s\nsend\n' $port "$2" | nsupdate -v -k "$d/$1" || true; }
up good.key "update add 32.7.100.51.198.rpz.example.com 60 A 127.0.0.25"
up good.key "update add 32.7.100.51.198.rpz.example.com 60 MX 10 mail.example."
up good.key "prereq yxrrset 32.9.100.51.198.rpz.example.com TXT
update delete 32.9.100.51.198.rpz.example.com A"
up bad.key "update add 32.8.100.51.198.rpz.example.com 60 A 127.0.0.25"
sleep 1
kill $tcpdump_pid
sleep 1
# Input: [mode][answer] (see fuzz_targets/rpz_update.rs for the mode bits).
tshark -r "$d/cap.pcap" -Y "tcp.srcport==$port && tcp.len>0" -T fields -e tcp.payload | python3 -c '
import os, sys
rows = [bytes.fromhex(l) for l in sys.stdin.read().split()]
noerror, refused, nxrrset, notauth = (r[2:] for r in rows)
out = sys.argv[1]
os.makedirs(out, exist_ok=True)
seeds = {
    "bind-noerror-resigned": bytes([4 | 8]) + noerror,
    "bind-noerror-unchained": bytes([8 | 1]) + noerror,
    "bind-noerror-two-batches": bytes([2 | 4 | 8 | 192]) + noerror,
    "bind-noerror-push-loop": bytes([3 | 4 | 8 | 64]) + noerror,
    "bind-noerror-refresh": bytes([3 | 4 | 8 | 32]) + noerror,
    "bind-refused": bytes([8]) + refused,
    "bind-refused-raw-framing": bytes([16 | 8 | 1]) + rows[1],
    "bind-nxrrset-removal": bytes([8 | 32]) + nxrrset,
    "bind-notauth-badsig": bytes([8 | 3]) + notauth,
}
for name, b in seeds.items():
    open(os.path.join(out, name), "wb").write(b)
' "$out"
