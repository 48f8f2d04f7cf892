"""A client's own HTTPS web site on 127.0.0.1, serving its Client ID Metadata Document
(draft-ietf-oauth-client-id-metadata-document), for the tests of clients that register by one
(tests/test_client_metadata_document.py: the Python SDK; tests/test_node_clients.py: the
TypeScript SDK and the Inspector CLI).

The MCP authorization spec (2025-11-25) and the draft make the client_id an https URL, and the
official clients check that before they use it (the TypeScript SDK's `isHttpsUrl`, sdk
1.32.2 dist/esm/client/auth.js): loopback http would not do. So the site's certificate is made
here at run time (never written outside the test's tmp folder, never committed), and the
tenant's fetcher is given it as a trust anchor, as a tenant would be given a CA; that is the
one product state the `documents` fixture sets, and it puts it back afterwards. The clients
themselves never fetch the document, so they need no trust (no NODE_EXTRA_CA_CERTS).
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import ssl
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from harness.lab import Lab

__all__ = ["DocumentServer", "cimd_site"]


def _certificate(tmp: Any) -> tuple[str, str, bytes]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cimd test client")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    pem = cert.public_bytes(serialization.Encoding.PEM)
    cert_file, key_file = tmp / "cert.pem", tmp / "key.pem"
    cert_file.write_bytes(pem)
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_file), str(key_file), pem


class DocumentServer:
    """The client's own web site: path -> (status, body)."""

    def __init__(self, tmp: Any) -> None:
        self.documents: dict[str, tuple[int, bytes]] = {}
        self.requests: list[str] = []
        documents, requests = self.documents, self.requests

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                requests.append(self.path)
                status, body = documents.get(self.path, (404, b"{}"))
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        cert, key, self.pem = _certificate(tmp)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.base = f"https://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, path: str, doc: Any, status: int = 200) -> str:
        url = f"{self.base}{path}"
        body = doc if isinstance(doc, bytes) else json.dumps(
            {"client_id": url, **doc} if isinstance(doc, dict) and "client_id" not in doc
            else doc).encode()
        self.documents[path] = (status, body)
        return url

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture(name="documents")
def cimd_site(lab: Lab, tmp_path: Path) -> Iterator[DocumentServer]:
    server = DocumentServer(tmp_path)
    fetcher = lab.verify.metadata_documents
    before = fetcher.verify
    fetcher.verify = ssl.create_default_context(cadata=server.pem.decode())
    try:
        yield server
    finally:
        fetcher.verify = before
        server.close()
