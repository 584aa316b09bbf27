"""Which of this machine's addresses another node reaches it at, and which interface holds it.

Owns: the two questions every cross-node connection of the run asks: "what is my address on the
route to that peer?" (`route_source`, asked of the kernel's routing table) and "which network
interface has that address?" (`interface_of`, for gloo's device, which otherwise binds to whatever
`gethostname()` resolves to: 127.0.0.1 or 127.0.1.1 on many machines, so a peer on another node
dials its own loopback), plus `free_port` (a port free on this machine now; the trainer picks its
rendezvous ports with it too). Stdlib only; no packet is ever sent.
Does not know: Ray, torch, what the connection is for.
"""

from __future__ import annotations

import fcntl
import ipaddress
import socket
import struct

_SIOCGIFADDR = 0x8915  # Linux ioctl: an interface's IPv4 address


class AddressError(RuntimeError):
    """No route to a peer, or no interface holds an address; the message names both."""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def route_source(peer: str) -> str:
    """This machine's source address for packets to `peer` (an IP or a resolvable name).

    A UDP `connect` only asks the routing table; nothing is sent. Loopback peers give loopback.
    """
    try:
        family, _, _, _, sockaddr = socket.getaddrinfo(peer, 9, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect(sockaddr)
            return s.getsockname()[0]
    except OSError as e:
        raise AddressError(f"no route from this node to {peer}: {e}") from None


def interface_of(ip: str) -> str:
    """The name of the (IPv4) network interface that holds `ip`."""
    if is_loopback(ip):
        return "lo"
    for _, name in socket.if_nameindex():
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            try:
                raw = fcntl.ioctl(s.fileno(), _SIOCGIFADDR, struct.pack("256s", name.encode()[:15]))
            except OSError:  # interface without an IPv4 address
                continue
        if socket.inet_ntoa(raw[20:24]) == ip:
            return name
    raise AddressError(f"no network interface of this node has the address {ip}")


def gloo_device(local_ip: str):  # -> torch ProcessGroupGloo.Device
    """A gloo device bound to `local_ip` (the address peers dial), not to the hostname's."""
    import torch.distributed as dist

    return dist.ProcessGroupGloo.create_device(hostname=local_ip)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on `host` right now."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])
