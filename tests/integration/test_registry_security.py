"""The registry over TLS (CA, client certificate) and with etcd user/password auth, real etcd."""

from __future__ import annotations

import asyncio
import subprocess
from ipaddress import IPv4Address

import pytest

from udpflannel.adapters.registry import EtcdOptions, EtcdRegistry
from udpflannel.core.subnet import LeaseAttrs
from udpflannel.errors import RegistryError
from udpflannel.lab.netlab import EtcdServer

ME = LeaseAttrs(public_ip=IPv4Address("192.0.2.11"))


def openssl(*args: str, cwd) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def pki(tmp_path):
    """A throw-away CA, a server certificate for 127.0.0.1 and a client certificate."""
    d = tmp_path / "pki"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=test-ca",
            "-keyout", "ca.key", "-out", "ca.crt", cwd=d)  # fmt: skip
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth,clientAuth\n")
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={name}",
                "-keyout", f"{name}.key", "-out", f"{name}.csr", cwd=d)  # fmt: skip
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                "-days", "1", "-extfile", "san.ext", "-out", f"{name}.crt", cwd=d)  # fmt: skip
    return d


@pytest.fixture
def tls_etcd(tmp_path, pki):
    with EtcdServer.loopback(
        tmp_path / "etcd0.data",
        scheme="https",
        extra_args=[f"--cert-file={pki}/server.crt", f"--key-file={pki}/server.key",
                    f"--trusted-ca-file={pki}/ca.crt", "--client-cert-auth"],
        ctl_args=[f"--cacert={pki}/ca.crt", f"--cert={pki}/client.crt", f"--key={pki}/client.key"],
    ) as srv:  # fmt: skip
        yield srv


def test_tls_with_client_certificate(tls_etcd, pki):
    tls_etcd.put("/test/net/config", '{"Network": "10.5.0.0/16"}')

    async def go(**files):
        reg = EtcdRegistry(EtcdOptions(endpoints=[tls_etcd.endpoint], prefix="/test/net", **files))
        try:
            cfg = await reg.get_config()
            lid = await reg.create_lease("10.5.3.0-24", ME, 3600)
            return cfg, lid
        finally:
            await reg.close()

    cfg, lid = asyncio.run(go(cafile=str(pki / "ca.crt"), certfile=str(pki / "client.crt"),
                              keyfile=str(pki / "client.key")))  # fmt: skip
    assert cfg == b'{"Network": "10.5.0.0/16"}' and lid
    assert tls_etcd.get("/test/net/subnets/10.5.3.0-24") == ME.to_json()

    # without the client certificate the server refuses us: a RegistryError, not a hang
    with pytest.raises(RegistryError):
        asyncio.run(go(cafile=str(pki / "ca.crt")))


def test_username_and_password(tmp_path):
    with EtcdServer.loopback(tmp_path / "etcd0.data") as srv:
        srv.ctl("user", "add", "root:rootpw")
        srv.ctl("user", "add", "flannel:s3cret")
        srv.ctl("role", "add", "flannel")
        srv.ctl("role", "grant-permission", "flannel", "--prefix=true", "readwrite", "/test/net/")
        srv.ctl("user", "grant-role", "flannel", "flannel")
        srv.ctl("auth", "enable")
        srv.ctl_args = ["--user=root:rootpw"]
        srv.put("/test/net/config", '{"Network": "10.5.0.0/16"}')

        async def go(user, password):
            reg = EtcdRegistry(EtcdOptions(endpoints=[srv.endpoint], prefix="/test/net",
                                           username=user, password=password))  # fmt: skip
            try:
                return await reg.get_config(), await reg.create_lease("10.5.4.0-24", ME, 3600)
            finally:
                await reg.close()

        cfg, lid = asyncio.run(go("flannel", "s3cret"))
        assert cfg == b'{"Network": "10.5.0.0/16"}' and lid
        with pytest.raises(RegistryError):
            asyncio.run(go("flannel", "wrong"))
