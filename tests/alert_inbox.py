"""A local JSON receiver (what Apprise's json:// POSTs) and a local SMTP server that wants
STARTTLS and a login (aiosmtpd, self-signed certificate), and the AlertsResource pointing at
both (`inbox.alerts`, `inbox.urls`)."""
import datetime
import email
import email.policy
import ipaddress
import json
import ssl
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from kryonix_dagster.resources import AlertsResource

from .conftest import free_port

SMTP_USER, SMTP_PASSWORD = "kryonix", "s3cret-Pw!"


class Inbox:
    def __init__(self):
        self.webhook: list[dict] = []  # Apprise's json:// payloads: version, title, message, type
        self.mail: list[str] = []  # each message as "Subject: …" and its plain-text body, decoded
        self.logins: list[str] = []  # who authenticated, after STARTTLS
        self.tls: list[bool] = []  # each message: was the session encrypted


def self_signed(folder) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    (folder / "cert.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (folder / "key.pem").write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.PKCS8,
                                                       serialization.NoEncryption()))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(folder / "cert.pem", folder / "key.pem")
    return context


def local_http(answer) -> HTTPServer:
    """An HTTP server on a free loopback port, in a daemon thread: each POST's body goes to
    `answer`, whose return value is the status code sent back. The caller shuts it down."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            self.send_response(answer(self.rfile.read(int(self.headers.get("content-length") or 0))))
            self.end_headers()

        def log_message(self, *args):
            pass

    http = HTTPServer(("127.0.0.1", free_port()), Handler)
    threading.Thread(target=http.serve_forever, daemon=True).start()
    return http


@pytest.fixture
def inbox(tmp_path):
    box = Inbox()

    def record(body: bytes) -> int:
        box.webhook.append(json.loads(body))
        return 200

    http = local_http(record)

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            box.tls.append(session.ssl is not None)
            message = email.message_from_bytes(envelope.content, policy=email.policy.default)
            box.mail.append(f"Subject: {message['subject']}\n\n{message.get_body(('plain',)).get_content()}")
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == SMTP_USER
              and auth_data.password.decode() == SMTP_PASSWORD)
        if ok:
            box.logins.append(SMTP_USER)
        return AuthResult(success=ok)

    smtp = Controller(Handler(), hostname="127.0.0.1", port=free_port(), tls_context=self_signed(tmp_path),
                      require_starttls=True, authenticator=authenticator, auth_required=True)
    smtp.start()
    box.cert = tmp_path / "cert.pem"  # SSL_CERT_FILE for a client that verifies the certificate
    box.smtp_port = smtp.port
    box.json_url = f"json://127.0.0.1:{http.server_port}/hook"
    # mailtos:// with STARTTLS and a login; verify=no accepts the self-signed certificate
    box.mail_url = (f"mailtos://{SMTP_USER}:{SMTP_PASSWORD.replace('!', '%21')}@127.0.0.1:{smtp.port}"
                    "?mode=starttls&verify=no&from=kryonix-backup@kryonix.test&to=sre@kryonix.test")
    box.urls = [box.json_url, box.mail_url]
    box.alerts = AlertsResource(urls=" ".join(box.urls))
    yield box
    smtp.stop()
    http.shutdown()
