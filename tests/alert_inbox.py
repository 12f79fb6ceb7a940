"""A local webhook receiver and SMTP server that alerts are delivered to, and the
AlertsResource pointing at both (`inbox.alerts`)."""
import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from aiosmtpd.controller import Controller

from kryonix_dagster.resources import AlertsResource

from .conftest import free_port


class Inbox:
    def __init__(self):
        self.webhook: list[dict] = []
        self.mail: list[str] = []


@pytest.fixture
def inbox():
    box = Inbox()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):
            box.webhook.append(json.loads(self.rfile.read(int(self.headers["content-length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    http = HTTPServer(("127.0.0.1", free_port()), Hook)
    threading.Thread(target=http.serve_forever, daemon=True).start()

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            box.mail.append(envelope.content.decode(errors="replace"))
            return "250 OK"

    smtp = Controller(Handler(), hostname="127.0.0.1", port=free_port())
    smtp.start()
    box.alerts = AlertsResource(webhook_url=f"http://127.0.0.1:{http.server_port}/hook", smtp_host="127.0.0.1",
                                smtp_port=smtp.port, email_to="sre@kryonix.test")
    yield box
    smtp.stop()
    http.shutdown()
