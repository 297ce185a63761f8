"""Headless Chromium driven over the DevTools protocol: set cookies, open a page, wait for it, screenshot."""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import requests

from support.e2e.harness import free_port

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
    "--hide-scrollbars",
    "--remote-allow-origins=*",
]


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


class Browser:
    def __init__(self, width: int = 1280, height: int = 1400) -> None:
        binary = chromium()
        if binary is None:
            raise RuntimeError("no chromium found: apt-get install chromium")
        self.profile = tempfile.mkdtemp(prefix="rj-chromium-")
        self.port = free_port()
        self.proc = subprocess.Popen(
            [
                binary,
                *FLAGS,
                f"--remote-debugging-port={self.port}",
                f"--user-data-dir={self.profile}",
                f"--window-size={width},{height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        self.ids = itertools.count(1)
        deadline = time.monotonic() + 30
        while True:
            try:
                pages = requests.get(f"http://127.0.0.1:{self.port}/json/list", timeout=2).json()
                target = next(p for p in pages if p.get("type") == "page")
                break
            except (requests.RequestException, StopIteration, ValueError):
                if time.monotonic() > deadline:
                    self.close()
                    raise RuntimeError("chromium did not open its DevTools port within 30 s") from None
                time.sleep(0.3)
        import websocket

        self.ws = websocket.create_connection(target["webSocketDebuggerUrl"], timeout=60)
        self.call("Page.enable")
        self.call("Network.enable")
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, **params: Any) -> dict[str, Any]:
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            reply = json.loads(self.ws.recv())
            if reply.get("id") == message_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def set_cookies(self, url: str, cookies: Mapping[str, str]) -> None:
        for name, value in cookies.items():
            self.call("Network.setCookie", name=name, value=value, url=url)

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    def open(self, url: str, ready: str = "document.readyState === 'complete'", timeout: float = 60) -> bool:
        """Navigate and wait until the JavaScript expression ``ready`` is true; False on timeout."""
        self.call("Page.navigate", url=url)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.evaluate(ready):
                    return True
            except RuntimeError:
                pass
            time.sleep(0.5)
        return False

    def screenshot(self, out: Path, full_page: bool = False) -> Path:
        params: dict[str, Any] = {"format": "png"}
        if full_page:
            metrics = self.call("Page.getLayoutMetrics")
            size = metrics.get("cssContentSize") or metrics["contentSize"]
            params.update(
                captureBeyondViewport=True,
                clip={"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1},
            )
        data = self.call("Page.captureScreenshot", **params)["data"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out

    def screenshot_of(self, selector: str, out: Path) -> Path:
        """A screenshot of the element ``selector`` matches (the whole element, scrolled or not)."""
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({selector!r}).getBoundingClientRect(); "
            "return [r.left + window.scrollX, r.top + window.scrollY, r.width, r.height]; })()"
        )
        x, y, width, height = box
        data = self.call(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": x, "y": y, "width": width, "height": height, "scale": 1},
        )["data"]
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(base64.b64decode(data))
        return out

    def close(self) -> None:
        try:
            if hasattr(self, "ws"):
                self.ws.close()
        finally:  # the whole process group (its own: start_new_session): Chromium's helpers too
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
            shutil.rmtree(self.profile, ignore_errors=True)
