"""The RPC's TLS contexts kept in step with their files: a set caught halfway through its
rotation (the certificate written, its key not yet) leaves the live context as it was."""

from __future__ import annotations

import shutil
import ssl
from pathlib import Path

import pytest

from devstack.certs import CertificateAuthority, IssuedCertificate
from devstack.rpc_tls import SERVER_NAME, RpcCertificates, issue_server
from services.foundation.rpc.tls import ReloadingTls, TlsFiles, client_context

HANDSHAKE_ROUNDS = 10


def handshake(server: ssl.SSLContext, client: ssl.SSLContext) -> ssl.SSLObject:
    """A TLS handshake between the two contexts, in memory; raises ssl.SSLError if it fails.
    Returns the client's end, which holds the certificate the server showed."""
    to_server, to_client = ssl.MemoryBIO(), ssl.MemoryBIO()
    client_end = client.wrap_bio(to_client, to_server, server_hostname=SERVER_NAME)
    server_end = server.wrap_bio(to_server, to_client, server_side=True)
    done: set[str] = set()
    for _ in range(HANDSHAKE_ROUNDS):
        for name, end in (("client", client_end), ("server", server_end)):
            if name in done:
                continue
            try:
                end.do_handshake()
                done.add(name)
            except ssl.SSLWantReadError:
                pass
        if len(done) == 2:
            return client_end
    raise AssertionError("the handshake did not finish")


def install(issued: IssuedCertificate, folder: Path) -> TlsFiles:
    """The files of `issued` copied where a process reads them (a mounted Secret)."""
    folder.mkdir(exist_ok=True)
    files = TlsFiles(folder / "ca.crt", folder / "tls.crt", folder / "tls.key")
    shutil.copyfile(issued.ca_path, files.ca_path)
    shutil.copyfile(issued.cert_path, files.cert_path)
    shutil.copyfile(issued.key_path, files.key_path)
    return files


def as_client(issued: IssuedCertificate) -> ssl.SSLContext:
    return client_context(TlsFiles(issued.ca_path, issued.cert_path, issued.key_path))


@pytest.fixture
def certificates(tmp_path: Path) -> RpcCertificates:
    return RpcCertificates.issue(tmp_path / "ca")


async def test_a_server_certificate_written_before_its_key_keeps_the_old_one_serving(
    certificates: RpcCertificates, tmp_path: Path
) -> None:
    files = install(certificates.server, tmp_path / "mounted")
    server = ReloadingTls(files, server=True)
    client = as_client(certificates.http)
    old = handshake(server.context, client).getpeercert(binary_form=True)
    renewed = issue_server(CertificateAuthority(tmp_path / "ca"))
    shutil.copyfile(renewed.cert_path, files.cert_path)  # its key is not written yet

    await server.step()

    assert server.reloads == 0
    assert handshake(server.context, client).getpeercert(binary_form=True) == old
    shutil.copyfile(renewed.key_path, files.key_path)
    await server.step()
    assert server.reloads == 1
    assert handshake(server.context, client).getpeercert(binary_form=True) != old


async def test_a_client_certificate_written_before_its_key_keeps_the_old_one_calling(
    certificates: RpcCertificates, tmp_path: Path
) -> None:
    files = install(certificates.http, tmp_path / "mounted")
    client = ReloadingTls(files, server=False)
    server = ReloadingTls(install(certificates.server, tmp_path / "server"), server=True)
    handshake(server.context, client.context)
    renewed = CertificateAuthority(tmp_path / "ca").issue(
        "rpc-http-renewed", hosts=(), client=True, uris=("spiffe://gatehouse/http",)
    )
    shutil.copyfile(renewed.cert_path, files.cert_path)

    await client.step()

    assert client.reloads == 0
    handshake(server.context, client.context)
