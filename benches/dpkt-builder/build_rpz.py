"""The paper's pcap -> RPZ builder (Python + dpkt), re-implemented as the
learner's baseline.

As the paper describes it: DNS queries are kept in a list and each response
is matched to its query by message ID; a response with NS records and the
matching glue A records (or a later A answer for an NS name) registers those
addresses as name servers (A 127.0.0.1); then MX answers given by a
registered server, with the A records of the exchange names (glue or a later
A answer), register mail exchangers (A 127.0.0.25). The result is written as
an RPZ zone file (the paper pushed it with TSIG UPDATE; the write is the same
set of records).

Usage: build_rpz.py CAPTURE.pcap ZONEFILE [--zone rpz.example.com]
Only UDP DNS is read, as in the paper. A matched query leaves the list (so
the list holds outstanding queries, searched newest first).
"""

import socket
import sys
import time

import dpkt


def ip_text(raw):
    return socket.inet_ntop(socket.AF_INET6 if len(raw) == 16 else socket.AF_INET, raw)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, out = sys.argv[1], sys.argv[2]
    zone = sys.argv[sys.argv.index("--zone") + 1] if "--zone" in sys.argv else "rpz.example.com"
    started = time.time()
    queries = []  # outstanding queries: (id, client, server)
    ns_names = set()
    mx_names = set()
    dns_servers = set()  # addresses registered as 127.0.0.1
    mail_hosts = set()  # addresses registered as 127.0.0.25
    packets = responses = matched = 0
    with open(path, "rb") as f:
        for _ts, buf in dpkt.pcap.Reader(f):
            packets += 1
            try:
                eth = dpkt.ethernet.Ethernet(buf)
                ip = eth.data
                if not isinstance(ip, (dpkt.ip.IP, dpkt.ip6.IP6)):
                    continue
                udp = ip.data
                if not isinstance(udp, dpkt.udp.UDP) or 53 not in (udp.sport, udp.dport):
                    continue
                msg = dpkt.dns.DNS(udp.data)
            except (dpkt.dpkt.UnpackError, dpkt.dpkt.NeedData, ValueError, IndexError, AttributeError):
                continue
            src, dst = ip_text(ip.src), ip_text(ip.dst)
            if msg.qr == dpkt.dns.DNS_Q:
                queries.append((msg.id, src, dst))
                continue
            responses += 1
            hit = None
            for i in range(len(queries) - 1, -1, -1):
                q = queries[i]
                if q[0] == msg.id and q[1] == dst and q[2] == src:
                    hit = i
                    break
            if hit is None:
                continue
            del queries[hit]
            matched += 1
            records = list(msg.an) + list(msg.ns) + list(msg.ar)
            names = set()
            for rr in records:
                if rr.type == dpkt.dns.DNS_NS:
                    names.add(rr.nsname.lower())
                elif rr.type == dpkt.dns.DNS_MX and src in dns_servers:
                    mx_names.add(rr.mxname.lower())
            ns_names.update(names)
            for rr in records:
                if rr.type == dpkt.dns.DNS_A:
                    name = rr.name.lower()
                    addr = socket.inet_ntoa(rr.ip)
                    if name in ns_names:
                        dns_servers.add(addr)
                    elif name in mx_names and src in dns_servers:
                        mail_hosts.add(addr)
    with open(out, "w") as z:
        z.write("$TTL 60\n@ IN SOA localhost. root.localhost. 1 3600 600 86400 60\n@ IN NS localhost.\n")
        for a in sorted(dns_servers - mail_hosts):
            z.write("%s.%s. IN A 127.0.0.1\n" % (a, zone))
        for a in sorted(mail_hosts):
            z.write("%s.%s. IN A 127.0.0.25\n" % (a, zone))
    took = time.time() - started
    print(
        '{"packets": %d, "responses": %d, "matched": %d, "dns": %d, "smtp": %d, "seconds": %.3f}'
        % (packets, responses, matched, len(dns_servers - mail_hosts), len(mail_hosts), took)
    )


if __name__ == "__main__":
    main()
