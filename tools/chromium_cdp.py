"""Load a page in headless Chromium and watch it through the DevTools protocol (tests and docs screenshots).

:func:`load_page` starts ``chromium --headless --no-sandbox --remote-debugging-port=0`` with a fresh
profile, opens a tab, enables the Runtime, Log and Page domains, navigates to the URL and waits
for the load event. It collects every ``console.error`` / ``console.warn`` call
(``Runtime.consoleAPICalled``), uncaught exception (``Runtime.exceptionThrown``) and browser log
entry of level warning/error (``Log.entryAdded``: failed resource loads, blocked requests), every
network request the page makes (``Network.requestWillBeSent``), evaluates JavaScript expressions in
the loaded page, and optionally writes a PNG screenshot of the top of the page.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path


def chromium_path() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageResult:
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    values: dict[str, object] = field(default_factory=dict)


class _Session:
    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=60, suppress_origin=True)
        self.next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self.next_id += 1
        msg = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        self.ws.send(json.dumps(msg))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float = 60.0) -> None:
        end = time.monotonic() + timeout
        if any(e.get("method") == method for e in self.events):
            return
        while time.monotonic() < end:
            ev = json.loads(self.ws.recv())
            self.events.append(ev)
            if ev.get("method") == method:
                return
        raise TimeoutError(f"no {method} within {timeout} s")

    def drain(self, seconds: float) -> None:
        self.ws.settimeout(seconds)
        try:
            while True:
                self.events.append(json.loads(self.ws.recv()))
        except Exception:  # the timeout ends the drain
            pass
        self.ws.settimeout(60)


def load_page(
    url: str,
    *,
    expressions: dict[str, str] | None = None,
    screenshot: Path | None = None,
    width: int = 1400,
    height: int = 2000,
) -> PageResult:
    """Load ``url`` headless; return its console/log errors, its requests and the values of ``expressions``."""
    exe = chromium_path()
    if exe is None:
        raise FileNotFoundError("no chromium on PATH")
    profile = tempfile.mkdtemp(prefix="tc-chromium-")
    proc = subprocess.Popen(
        [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--remote-debugging-port=0",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ws_url = None
        end = time.monotonic() + 60
        while time.monotonic() < end and ws_url is None:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                break
            m = re.search(r"DevTools listening on (ws://\S+)", line)
            if m:
                ws_url = m.group(1)
        if ws_url is None:
            raise RuntimeError("chromium did not print its DevTools address")
        s = _Session(ws_url)
        target = s.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        sid = s.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for domain in ("Runtime", "Log", "Page", "Network"):
            s.send(f"{domain}.enable", session=sid)
        s.send(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=sid,
        )
        s.events.clear()
        s.send("Page.navigate", {"url": url}, session=sid)
        s.wait_for("Page.loadEventFired")
        s.drain(1.0)
        res = PageResult()
        for ev in s.events:
            m, p = ev.get("method"), ev.get("params", {})
            if m == "Runtime.consoleAPICalled" and p.get("type") in ("error", "warning", "assert"):
                res.errors.append(
                    f"console.{p['type']}: "
                    + " ".join(str(a.get("value", a.get("description"))) for a in p.get("args", []))
                )
            elif m == "Runtime.exceptionThrown":
                res.errors.append("exception: " + p.get("exceptionDetails", {}).get("text", ""))
            elif m == "Log.entryAdded" and p.get("entry", {}).get("level") in ("error", "warning"):
                e = p["entry"]
                res.errors.append(f"log.{e['level']}: {e.get('text')} {e.get('url', '')}".strip())
            elif m == "Network.requestWillBeSent":
                res.requests.append(p.get("request", {}).get("url", ""))
        for name, expr in (expressions or {}).items():
            out = s.send("Runtime.evaluate", {"expression": expr, "returnByValue": True}, session=sid)
            res.values[name] = out.get("result", {}).get("value")
        if screenshot is not None:
            shot = s.send("Page.captureScreenshot", {"format": "png"}, session=sid)
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            Path(screenshot).write_bytes(base64.b64decode(shot["data"]))
        s.ws.close()
        return res
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(profile, ignore_errors=True)


def main() -> None:
    """``python tools/chromium_cdp.py PAGE.html --screenshot OUT.png``: load a local page, print its
    errors and requests, write the screenshot (used for docs/images/)."""
    import argparse

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("page", type=Path)
    ap.add_argument("--screenshot", type=Path, required=True)
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=2000)
    args = ap.parse_args()
    res = load_page(args.page.resolve().as_uri(), screenshot=args.screenshot, width=args.width, height=args.height)
    print(f"errors: {res.errors or 'none'}")
    print(f"requests: {[u[:60] for u in res.requests]}")
    print(f"wrote {args.screenshot}")


if __name__ == "__main__":
    main()
