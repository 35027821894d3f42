"""rtnetlink numbers from the kernel's uapi headers, and the names users see for them.

Everything the kernel reports as a number is shown to users by name (docs/events.md); the tables
that do that live here, next to the numbers, so decode and state never carry magic numbers.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Final

# <linux/netlink.h>
NETLINK_ROUTE: Final = 0
SOL_NETLINK: Final = 270
NETLINK_ADD_MEMBERSHIP: Final = 1
NETLINK_DROP_MEMBERSHIP: Final = 2
NETLINK_GET_STRICT_CHK: Final = 12
NLMSG_NOOP: Final = 1
NLMSG_ERROR: Final = 2
NLMSG_DONE: Final = 3
NLMSG_TSTAMP: Final = 15  # iproute2's rtmon writes these between messages in its files
NLM_F_REQUEST: Final = 0x1
NLM_F_MULTI: Final = 0x2
NLM_F_DUMP_INTR: Final = 0x10
NLM_F_REPLACE: Final = 0x100  # on a notification: this object took another's place
NLM_F_DUMP: Final = 0x300

# <linux/rtnetlink.h> message types
RTM_NEWLINK: Final = 16
RTM_DELLINK: Final = 17
RTM_GETLINK: Final = 18
RTM_NEWADDR: Final = 20
RTM_DELADDR: Final = 21
RTM_GETADDR: Final = 22
RTM_NEWROUTE: Final = 24
RTM_DELROUTE: Final = 25
RTM_GETROUTE: Final = 26
RTM_NEWNEIGH: Final = 28
RTM_DELNEIGH: Final = 29
RTM_GETNEIGH: Final = 30
RTM_NEWRULE: Final = 32
RTM_DELRULE: Final = 33
RTM_GETRULE: Final = 34
RTM_NEWNETCONF: Final = 80
RTM_DELNETCONF: Final = 81
RTM_GETNETCONF: Final = 82

# multicast groups (enum rtnetlink_groups); joined one by one with NETLINK_ADD_MEMBERSHIP
RTNLGRP_LINK: Final = 1
RTNLGRP_NEIGH: Final = 3
RTNLGRP_IPV4_IFADDR: Final = 5
RTNLGRP_IPV4_ROUTE: Final = 7
RTNLGRP_IPV4_RULE: Final = 8
RTNLGRP_IPV6_IFADDR: Final = 9
RTNLGRP_IPV6_ROUTE: Final = 11
RTNLGRP_IPV6_RULE: Final = 19
RTNLGRP_IPV4_NETCONF: Final = 24
RTNLGRP_IPV6_NETCONF: Final = 25

#: The user-facing group names of `[monitor] groups` and the kernel groups each one joins.
GROUPS: Final[dict[str, tuple[int, ...]]] = {
    "link": (RTNLGRP_LINK,),
    "addr": (RTNLGRP_IPV4_IFADDR, RTNLGRP_IPV6_IFADDR),
    "route": (RTNLGRP_IPV4_ROUTE, RTNLGRP_IPV6_ROUTE),
    "neigh": (RTNLGRP_NEIGH,),
    "rule": (RTNLGRP_IPV4_RULE, RTNLGRP_IPV6_RULE),
    "netconf": (RTNLGRP_IPV4_NETCONF, RTNLGRP_IPV6_NETCONF),
}

AF_UNSPEC: Final = socket.AF_UNSPEC
AF_INET: Final = socket.AF_INET
AF_INET6: Final = socket.AF_INET6
FAMILY_NAMES: Final[dict[int, str]] = {AF_INET: "inet", AF_INET6: "inet6"}

# <linux/if_link.h>
IFLA_ADDRESS: Final = 1
IFLA_IFNAME: Final = 3
IFLA_MTU: Final = 4
IFLA_MASTER: Final = 10
IFLA_OPERSTATE: Final = 16
IFLA_WIRELESS: Final = 11
IFLA_LINKINFO: Final = 18
IFLA_INFO_KIND: Final = 1
#: u32: carrier transitions since the device was created (Linux 3.15); read for the metrics
IFLA_CARRIER_CHANGES: Final = 35

# <linux/if_addr.h>
IFA_ADDRESS: Final = 1
IFA_LOCAL: Final = 2
IFA_LABEL: Final = 3
IFA_FLAGS: Final = 8

# <linux/rtnetlink.h> route attributes
RTA_DST: Final = 1
RTA_SRC: Final = 2
RTA_OIF: Final = 4
RTA_GATEWAY: Final = 5
RTA_PRIORITY: Final = 6
RTA_PREFSRC: Final = 7
RTA_MULTIPATH: Final = 9
RTA_TABLE: Final = 15
RTA_VIA: Final = 18
RTM_F_CLONED: Final = 0x200

# <linux/neighbour.h>
NDA_DST: Final = 1
NDA_LLADDR: Final = 2
NDA_IFINDEX: Final = 8

# <linux/fib_rules.h>
FRA_DST: Final = 1
FRA_SRC: Final = 2
FRA_IIFNAME: Final = 3
FRA_GOTO: Final = 4
FRA_PRIORITY: Final = 6
FRA_FWMARK: Final = 10
FRA_TABLE: Final = 15
FRA_FWMASK: Final = 16
FRA_OIFNAME: Final = 17
FIB_RULE_INVERT: Final = 0x2
#: rule attributes beyond the classic ones, by the name `ip rule` gives them
RULE_EXTRA_ATTRS: Final = {
    13: "suppress_ifgroup",
    14: "suppress_prefixlength",
    19: "l3mdev",
    20: "uidrange",
    21: "protocol",
    22: "ipproto",
    23: "sport",
    24: "dport",
}

# <linux/netconf.h>
NETCONFA_IFINDEX: Final = 1
NETCONFA_IFINDEX_ALL: Final = -1
NETCONFA_IFINDEX_DEFAULT: Final = -2
NETCONF_ATTRS: Final = {
    2: "forwarding",
    3: "rp_filter",
    4: "mc_forwarding",
    5: "proxy_neigh",
    6: "ignore_routes_with_linkdown",
    7: "input",
    8: "bc_forwarding",
}
RP_FILTER_NAMES: Final = {0: "off", 1: "strict", 2: "loose"}

# <linux/if.h> interface flags, in bit order
IFF_UP: Final = 0x1
IFF_PROMISC: Final = 0x100
IFF_LOWER_UP: Final = 0x10000
IFF_NAMES: Final = (
    (0x1, "up"),
    (0x2, "broadcast"),
    (0x4, "debug"),
    (0x8, "loopback"),
    (0x10, "pointopoint"),
    (0x20, "notrailers"),
    (0x40, "running"),
    (0x80, "noarp"),
    (0x100, "promisc"),
    (0x200, "allmulti"),
    (0x400, "master"),
    (0x800, "slave"),
    (0x1000, "multicast"),
    (0x2000, "portsel"),
    (0x4000, "automedia"),
    (0x8000, "dynamic"),
    (0x10000, "lower_up"),
    (0x20000, "dormant"),
    (0x40000, "echo"),
)

OPERSTATE_NAMES: Final = (
    "unknown",
    "notpresent",
    "down",
    "lowerlayerdown",
    "testing",
    "dormant",
    "up",
)
#: operstates in which a link that reports IFF_LOWER_UP still cannot carry traffic
NO_CARRIER_OPERSTATES: Final = frozenset({"notpresent", "down", "lowerlayerdown"})

SCOPE_NAMES: Final = {0: "global", 200: "site", 253: "link", 254: "host", 255: "nowhere"}

PROTOCOL_NAMES: Final = {
    0: "unspec",
    1: "redirect",
    2: "kernel",
    3: "boot",
    4: "static",
    8: "gated",
    9: "ra",
    10: "mrt",
    11: "zebra",
    12: "bird",
    13: "dnrouted",
    14: "xorp",
    15: "ntk",
    16: "dhcp",
    17: "mrouted",
    18: "keepalived",
    42: "babel",
    99: "openr",
    186: "bgp",
    187: "isis",
    188: "ospf",
    189: "rip",
    192: "eigrp",
}

TABLE_NAMES: Final = {0: "unspec", 253: "default", 254: "main", 255: "local"}

ROUTE_TYPE_NAMES: Final = (
    "unspec",
    "unicast",
    "local",
    "broadcast",
    "anycast",
    "multicast",
    "blackhole",
    "unreachable",
    "prohibit",
    "throw",
    "nat",
    "xresolve",
)

NUD_NAMES: Final = (
    (0x01, "incomplete"),
    (0x02, "reachable"),
    (0x04, "stale"),
    (0x08, "delay"),
    (0x10, "probe"),
    (0x20, "failed"),
    (0x40, "noarp"),
    (0x80, "permanent"),
)

NTF_NAMES: Final = (
    (0x01, "use"),
    (0x02, "self"),
    (0x04, "master"),
    (0x08, "proxy"),
    (0x10, "extern_learn"),
    (0x20, "offloaded"),
    (0x40, "sticky"),
    (0x80, "router"),
)

IFA_FLAG_NAMES: Final = (
    (0x01, "secondary"),  # "temporary" for inet6, see addr_flag_names()
    (0x02, "nodad"),
    (0x04, "optimistic"),
    (0x08, "dadfailed"),
    (0x10, "homeaddress"),
    (0x20, "deprecated"),
    (0x40, "tentative"),
    (0x80, "permanent"),
    (0x100, "managetempaddr"),
    (0x200, "noprefixroute"),
    (0x400, "mcautojoin"),
    (0x800, "stable-privacy"),
)

RULE_ACTION_NAMES: Final = {
    0: "unspec",
    1: "lookup",
    2: "goto",
    3: "nop",
    6: "blackhole",
    7: "unreachable",
    8: "prohibit",
}


def bit_names(value: int, table: tuple[tuple[int, str], ...]) -> list[str]:
    """Names of the bits set in ``value``, sorted; unknown bits appear as hex."""
    names = [name for bit, name in table if value & bit]
    known = 0
    for bit, _ in table:
        known |= bit
    if value & ~known:
        names.append(f"0x{value & ~known:x}")
    return sorted(names)


def addr_flag_names(flags: int, family: int) -> list[str]:
    """Address flag names; bit 0x01 means "temporary" for IPv6 and "secondary" for IPv4."""
    names = bit_names(flags, IFA_FLAG_NAMES)
    if family == AF_INET6 and flags & 0x01:
        names = sorted("temporary" if n == "secondary" else n for n in names)
    return names


def _read_iproute2_names(name: str, into: dict[int, str]) -> None:
    """Merge iproute2's `rt_tables`/`rt_protos` files, so names match what `ip` shows."""
    for directory in ("/usr/share/iproute2", "/usr/lib/iproute2", "/etc/iproute2"):
        try:
            text = Path(directory, name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for line in text.splitlines():
            fields = line.split("#", 1)[0].split()
            if len(fields) >= 2:
                try:
                    into[int(fields[0], 0)] = fields[1]
                except ValueError:
                    continue


def load_system_names() -> None:
    """Extend the built-in table and protocol names with the host's iproute2 files.

    Called once at start-up (never at import time) by the daemon and the CLI.
    """
    _read_iproute2_names("rt_tables", TABLE_NAMES)
    _read_iproute2_names("rt_protos", PROTOCOL_NAMES)
