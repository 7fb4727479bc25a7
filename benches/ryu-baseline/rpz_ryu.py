"""The paper's OpenFlow 1.3 controller (Ryu), re-implemented as a fair baseline.

SMTP (tcp 25/465/587) and DNS (udp/tcp 53) packets go to the controller; all
other traffic is forwarded NORMAL by the switch. For each packet-in the
destination address is looked up in the BIND Response Policy Zone with
dnspython, querying the IP literal as the name (e.g. ``131.112.12.18``):

* answer 127.0.0.25  -> registered mail exchanger: SMTP and DNS allowed
* answer 127.0.0.1   -> registered name server: DNS allowed
* anything else      -> blocked (the packet is dropped)

An allowed destination gets a flow (dst address + protocol + port -> NORMAL,
idle timeout) and the packet is sent on with a packet-out; the paper's log
lines "<ip> is blocked" / "<ip> is registered and pass" are printed.

Settings come from the environment so the benchmark and the lab can point it
at their BIND: RPZ_SERVER (address of BIND, required), RPZ_PORT (53),
RPZ_TIMEOUT (seconds per query, 0.5), FLOW_IDLE_TIMEOUT (seconds, 60).
Run: EVENTLET_NO_GREENDNS=yes ryu-manager --ofp-tcp-listen-port PORT rpz_ryu.py
(eventlet 0.33's green DNS patch breaks dnspython 2.6's ``dns.query.udp``;
without it dnspython still uses eventlet's green sockets, so lookups do not
block the controller.)
"""

import os
import sys

import dns.exception
import dns.resolver
from ryu.base import app_manager
from ryu.controller import ofp_event
from ryu.controller.handler import CONFIG_DISPATCHER, MAIN_DISPATCHER, set_ev_cls
from ryu.lib.packet import ethernet, ipv4, packet, tcp, udp
from ryu.ofproto import ofproto_v1_3

SMTP_PORTS = (25, 465, 587)
DNS_PORT = 53
ALLOW_SMTP = {"127.0.0.25"}
ALLOW_DNS = {"127.0.0.1", "127.0.0.25"}


class RpzRyu(app_manager.RyuApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        server = os.environ.get("RPZ_SERVER")
        if not server:
            sys.exit("RPZ_SERVER (the BIND address) is not set")
        # One resolver for the life of the app (no per-packet setup), no
        # cache: the paper asks BIND on every packet-in so RPZ changes count.
        self.resolver = dns.resolver.Resolver(configure=False)
        self.resolver.nameservers = [server]
        self.resolver.port = int(os.environ.get("RPZ_PORT", "53"))
        self.resolver.timeout = float(os.environ.get("RPZ_TIMEOUT", "0.5"))
        self.resolver.lifetime = 2 * self.resolver.timeout
        self.idle_timeout = int(os.environ.get("FLOW_IDLE_TIMEOUT", "60"))
        self.decisions = 0

    def add_flow(self, dp, priority, match, actions, idle_timeout=0):
        ofp, parser = dp.ofproto, dp.ofproto_parser
        inst = [parser.OFPInstructionActions(ofp.OFPIT_APPLY_ACTIONS, actions)]
        dp.send_msg(
            parser.OFPFlowMod(
                datapath=dp, priority=priority, match=match, instructions=inst, idle_timeout=idle_timeout
            )
        )

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def switch_features(self, ev):
        dp = ev.msg.datapath
        ofp, parser = dp.ofproto, dp.ofproto_parser
        # Everything else: ordinary L2 switching.
        self.add_flow(dp, 0, parser.OFPMatch(), [parser.OFPActionOutput(ofp.OFPP_NORMAL)])
        to_ctrl = [parser.OFPActionOutput(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)]
        for port in SMTP_PORTS:
            self.add_flow(dp, 10, parser.OFPMatch(eth_type=0x0800, ip_proto=6, tcp_dst=port), to_ctrl)
        self.add_flow(dp, 10, parser.OFPMatch(eth_type=0x0800, ip_proto=17, udp_dst=DNS_PORT), to_ctrl)
        self.add_flow(dp, 10, parser.OFPMatch(eth_type=0x0800, ip_proto=6, tcp_dst=DNS_PORT), to_ctrl)

    def rpz_answers(self, ip):
        """A records BIND's RPZ gives for the IP literal (empty if none)."""
        try:
            ans = self.resolver.resolve(ip, "A", search=False, raise_on_no_answer=False)
        except dns.resolver.NXDOMAIN:
            return set()  # not registered: the normal answer for a blocked address
        except (dns.exception.DNSException, OSError) as e:
            print("RPZ lookup of %s failed: %r" % (ip, e), file=sys.stderr, flush=True)
            return set()
        return {r.address for r in ans} if ans.rrset is not None else set()

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def packet_in(self, ev):
        msg = ev.msg
        dp = msg.datapath
        ofp, parser = dp.ofproto, dp.ofproto_parser
        pkt = packet.Packet(msg.data)
        ip = pkt.get_protocol(ipv4.ipv4)
        if ip is None or pkt.get_protocol(ethernet.ethernet) is None:
            return
        t, u = pkt.get_protocol(tcp.tcp), pkt.get_protocol(udp.udp)
        if t is not None and t.dst_port in SMTP_PORTS:
            allowed, match = ALLOW_SMTP, parser.OFPMatch(
                eth_type=0x0800, ipv4_dst=ip.dst, ip_proto=6, tcp_dst=t.dst_port
            )
        elif t is not None and t.dst_port == DNS_PORT:
            allowed, match = ALLOW_DNS, parser.OFPMatch(eth_type=0x0800, ipv4_dst=ip.dst, ip_proto=6, tcp_dst=DNS_PORT)
        elif u is not None and u.dst_port == DNS_PORT:
            allowed, match = ALLOW_DNS, parser.OFPMatch(eth_type=0x0800, ipv4_dst=ip.dst, ip_proto=17, udp_dst=DNS_PORT)
        else:
            return
        self.decisions += 1
        if self.rpz_answers(ip.dst) & allowed:
            print("%s is registered and pass" % ip.dst, flush=True)
            actions = [parser.OFPActionOutput(ofp.OFPP_NORMAL)]
            self.add_flow(dp, 20, match, actions, idle_timeout=self.idle_timeout)
            data = msg.data if msg.buffer_id == ofp.OFP_NO_BUFFER else None
            dp.send_msg(
                parser.OFPPacketOut(
                    datapath=dp,
                    buffer_id=msg.buffer_id,
                    in_port=msg.match["in_port"],
                    actions=actions,
                    data=data,
                )
            )
        else:
            print("%s is blocked" % ip.dst, flush=True)
