"""Load an HTML file in headless Chromium over the DevTools protocol (standard library only, loopback only).

`check_page(path, screenshot)` starts Chromium with a fresh profile and a debugging port bound to 127.0.0.1,
opens the file, waits for the load event, and reports every console message, uncaught exception, log entry
(failed loads, blocked requests, CSP violations) and non-`file:`/`data:` request, plus each <img>'s natural size;
it saves a full-page PNG screenshot. A minimal WebSocket client (RFC 6455: masked text frames out, any frames in)
stands in for the `websockets` package.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0", "--hide-scrollbars"]


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


class _WebSocket:
    def __init__(self, url: str, timeout: float) -> None:
        assert url.startswith("ws://127.0.0.1:"), url
        hostport, _, path = url[len("ws://"):].partition("/")
        host, port = hostport.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
                           ).encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(1)
            if not chunk:
                raise ConnectionError("DevTools closed the connection during the handshake")
            head += chunk
        if b" 101 " not in head.split(b"\r\n")[0]:
            raise ConnectionError(f"DevTools refused the WebSocket: {head.decode(errors='replace')}")

    def _exact(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            buf += chunk
        return buf

    def send(self, text: str) -> None:
        data = text.encode()
        n = len(data)
        head = bytes([0x81]) + (bytes([0x80 | n]) if n < 126 else
                                bytes([0x80 | 126]) + struct.pack(">H", n) if n < 65536 else
                                bytes([0x80 | 127]) + struct.pack(">Q", n))
        mask = os.urandom(4)
        self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))

    def recv(self) -> str:
        parts = []
        while True:
            b0, b1 = self._exact(2)
            n = b1 & 0x7F
            if n == 126:
                n = struct.unpack(">H", self._exact(2))[0]
            elif n == 127:
                n = struct.unpack(">Q", self._exact(8))[0]
            payload = self._exact(n)
            op = b0 & 0x0F
            if op == 0x8:
                raise ConnectionError("DevTools closed the WebSocket")
            if op == 0x9:  # ping → pong
                self.sock.sendall(bytes([0x8A, 0x80 | len(payload)]) + b"\0\0\0\0" + payload)
                continue
            parts.append(payload)
            if b0 & 0x80:
                return b"".join(parts).decode()

    def close(self) -> None:
        self.sock.close()


@dataclass
class PageCheck:
    """What the browser saw: image sizes, console/log/exception messages, requests that left file:/data:."""

    images: list[dict] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    external_requests: list[str] = field(default_factory=list)
    title: str = ""
    height: int = 0


class _Session:
    def __init__(self, ws: _WebSocket) -> None:
        self.ws, self.next_id, self.events = ws, 0, []

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        my = self.next_id
        self.ws.send(json.dumps({"id": my, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == my:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            if "method" in msg:
                self.events.append(msg)

    def wait_for(self, method: str, timeout: float) -> None:
        end = time.monotonic() + timeout
        if any(e["method"] == method for e in self.events):
            return
        while time.monotonic() < end:
            msg = json.loads(self.ws.recv())
            if "method" in msg:
                self.events.append(msg)
                if msg["method"] == method:
                    return
        raise TimeoutError(f"no {method} within {timeout} s")


def _devtools_port(profile: Path, proc: subprocess.Popen, timeout: float) -> int:
    f = profile / "DevToolsActivePort"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"chromium exited with code {proc.returncode}: {proc.stderr.read()[-2000:]}")
        if f.exists() and f.read_text().strip():
            return int(f.read_text().split()[0])
        time.sleep(0.1)
    raise TimeoutError("chromium did not open its DevTools port")


def _stop_group(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    """Terminate Chromium's process group (SIGKILL after ``timeout``) and wait until none of it is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            proc.poll()  # reap the browser itself, so that the group can empty
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
    proc.wait()


def check_page(path: Path, screenshot: Path, *, chromium: str, width: int = 1280, timeout: float = 60.0
               ) -> PageCheck:
    """Open `path` in headless Chromium, collect what went wrong, save a full-page screenshot to `screenshot`."""
    # The profile is removed only after every Chromium process has gone: its helper processes (renderer, crash
    # handler) outlive the browser's own for a moment and still write there ("Directory not empty: 'Default'" from
    # the temporary directory's cleanup, seen once in CI). Chromium runs in its own session so that its whole
    # process group can be stopped and waited for.
    with tempfile.TemporaryDirectory(prefix="rllc-chromium-") as tmp:
        profile = Path(tmp)
        proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                                 f"--window-size={width},900", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            port = _devtools_port(profile, proc, timeout)
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=timeout) as resp:
                pages = [t for t in json.load(resp) if t.get("type") == "page"]
            ws = _WebSocket(pages[0]["webSocketDebuggerUrl"], timeout)
            s = _Session(ws)
            for domain in ("Page", "Runtime", "Log", "Network"):
                s.call(f"{domain}.enable")
            s.call("Page.navigate", url=path.resolve().as_uri())
            s.wait_for("Page.loadEventFired", timeout)
            js = ("JSON.stringify({title: document.title, height: document.documentElement.scrollHeight, "
                  "images: Array.from(document.images).map(i => ({alt: i.alt, complete: i.complete, "
                  "w: i.naturalWidth, h: i.naturalHeight}))})")
            got = json.loads(s.call("Runtime.evaluate", expression=js, returnByValue=True)["result"]["value"])
            shot = s.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": width, "height": min(got["height"], 40000), "scale": 1})
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            out = PageCheck(images=got["images"], title=got["title"], height=got["height"])
            for e in s.events:
                m, p = e["method"], e.get("params", {})
                if m == "Runtime.consoleAPICalled":
                    out.console.append(f"console.{p['type']}: "
                                       + " ".join(str(a.get("value", a.get("description"))) for a in p["args"]))
                elif m == "Runtime.exceptionThrown":
                    out.console.append(f"exception: {p['exceptionDetails'].get('text')}")
                elif m == "Log.entryAdded":
                    out.console.append(f"log.{p['entry']['level']}: {p['entry']['text']}")
                elif m == "Network.requestWillBeSent":
                    url = p["request"]["url"]
                    if not url.startswith(("file:", "data:")):
                        out.external_requests.append(url)
            ws.close()
            return out
        finally:
            _stop_group(proc)
