#!/usr/bin/env python3
"""Fill an etcd with flannel leases (or garbage) fast: gRPC Txn batches of 128 puts.

    etcd_fill.py --endpoint http://192.0.2.2:2379 --count 100000 \\
                 --network 10.0.0.0/8 --subnet-len 26 --backend-type alloc
    etcd_fill.py --endpoint ... --garbage 20 --garbage-size 1048576 --garbage-from 10.5.100.0
    etcd_fill.py --endpoint ... --put /coreos.com/network/subnets/10.5.9.0-24 < value

Leases are the first --count subnets of --network after --skip, each with its own
PublicIP (172.16.0.0 + i), as flanneld writes them, with --backend-data-size bytes of
BackendData ({"Blob": "xxx..."}) when given. Garbage values are --garbage keys that look
like lease keys but hold --garbage-size bytes of 'x'. --put writes standard input (any
bytes, up to 64 MiB: etcdctl's client stops at 2 MiB) under one key. Used by the scale and
hostile-value tests and bench/bench_scale.py; run it inside the etcd's namespace
(`ip netns exec ...`). The etcd needs --max-request-bytes for values over 1.5 MiB.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from ipaddress import IPv4Address, IPv4Network
from urllib.parse import urlsplit

import grpc
from aetcd import rpc

BATCH = 128  # etcd's default --max-txn-ops


def target(endpoint: str) -> str:
    """gRPC's host:port of an endpoint URL: 'http://[2001:db8::2]:2379' -> '[2001:db8::2]:2379'
    (urlsplit's hostname drops the brackets an IPv6 address needs)."""
    u = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    host = u.hostname or "127.0.0.1"
    return f"[{host}]:{u.port or 2379}" if ":" in host else f"{host}:{u.port or 2379}"


def channel(endpoint: str) -> grpc.Channel:
    return grpc.insecure_channel(target(endpoint), options=[("grpc.max_send_message_length", 64 << 20)])


def put_all(kv, items, batch: int = BATCH) -> None:
    items = list(items)
    for i in range(0, len(items), batch):
        ops = [rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=v)) for k, v in items[i : i + batch]]
        kv.Txn(rpc.TxnRequest(success=ops), timeout=30)


def leases(prefix: str, network: IPv4Network, subnet_len: int, count: int, skip: int, btype: str, data_size: int = 0):
    step = 1 << (32 - subnet_len)
    base = int(network.network_address)
    for i in range(skip, skip + count):
        net = IPv4Network((base + i * step, subnet_len))
        doc = {"PublicIP": str(IPv4Address("172.16.0.0") + i), "PublicIPv6": None}
        if btype:
            doc["BackendType"] = btype
        if data_size:
            doc["BackendData"] = {"Blob": "x" * data_size}
        key = f"{prefix}/subnets/{net.network_address}-{subnet_len}".encode()
        yield key, json.dumps(doc, separators=(",", ":")).encode()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--endpoint", required=True)
    ap.add_argument("--prefix", default="/coreos.com/network")
    ap.add_argument("--count", type=int, default=0)
    ap.add_argument("--network", default="10.0.0.0/8")
    ap.add_argument("--subnet-len", type=int, default=26)
    ap.add_argument("--skip", type=int, default=16, help="leave the first subnets free")
    ap.add_argument("--backend-type", default="alloc")
    ap.add_argument("--backend-data-size", type=int, default=0, help="bytes of BackendData per lease")
    ap.add_argument("--put", metavar="KEY", help="write standard input (any bytes) under KEY")
    ap.add_argument("--garbage", type=int, default=0)
    ap.add_argument("--garbage-size", type=int, default=1 << 20)
    ap.add_argument("--garbage-from", default="10.5.100.0", help="first garbage key's address (/24 steps)")
    a = ap.parse_args()
    kv = rpc.KVStub(channel(a.endpoint))
    t0 = time.monotonic()
    if a.put:
        put_all(kv, [(a.put.encode(), sys.stdin.buffer.read())], batch=1)
    if a.count:
        put_all(kv, leases(a.prefix, IPv4Network(a.network), a.subnet_len, a.count, a.skip, a.backend_type,
                           a.backend_data_size), batch=BATCH if a.backend_data_size < 8192 else 1)  # fmt: skip
    if a.garbage:
        first = IPv4Address(a.garbage_from)
        junk = b"x" * a.garbage_size
        put_all(kv, ((f"{a.prefix}/subnets/{first + 256 * i}-24".encode(), junk) for i in range(a.garbage)), batch=1)
    print(f"put {a.count} leases and {a.garbage} garbage values in {time.monotonic() - t0:.1f}s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
