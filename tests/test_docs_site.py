"""The docs site: it builds strictly, its generated references list what the code registers, and
every page opens in headless Chromium without a console error or a missing image.

Chromium is Debian's ``chromium`` package (``make test`` installs it); it is driven over the
DevTools protocol, through the small WebSocket client below, one browser for every page.
"""

from __future__ import annotations

import base64
import functools
import http.server
import importlib.util
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

# One xdist worker builds the site once for all of them (`make test` runs `--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("docs-site")

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def load_generator() -> Any:
    """docs/hooks/generate.py, the module MkDocs runs as a hook."""
    spec = importlib.util.spec_from_file_location("optkit_docs_generate", ROOT / "docs" / "hooks" / "generate.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def generate() -> Any:
    return load_generator()


@pytest.fixture(scope="session")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site as `make docs` builds it (``mkdocs build --strict``), in a temporary folder."""
    out = tmp_path_factory.mktemp("site")
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"}, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"mkdocs build --strict failed:\n{done.stderr[-6000:]}"
    return out


# --- the references list what the code registers ------------------------------------------------------

def test_every_command_is_in_the_cli_reference(site: Path) -> None:
    from optkit.cli.commands import cli

    page = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert cli.commands, "no commands registered"
    for name, command in cli.commands.items():
        assert f"optkit {name}" in page, f"command {name} is missing from the CLI reference"
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-"):
                    assert opt in page, f"option {opt} of {name} is missing from the CLI reference"


def test_every_hook_and_parameter_is_in_the_hooks_reference(generate: Any) -> None:
    import inspect

    from optkit.host.manager import get_plugin_manager

    page = generate.hooks_markdown()
    registered = [name for name in vars(get_plugin_manager().hook) if name.startswith("optkit_")]
    assert registered and sorted(registered) == sorted(spec.__name__ for spec in generate.hook_specs())
    for spec in generate.hook_specs():
        assert f"## `{spec.__name__}`" in page
        for param in inspect.signature(spec).parameters:
            assert f"| `{param}` |" in page, f"{spec.__name__}: parameter {param} has no row (no :param: line?)"


def test_every_pass_option_is_in_the_pass_options_reference(generate: Any) -> None:
    from optkit.host.facade import Host

    page = generate.pass_options_markdown()
    passes = list(Host().passes)
    assert {"fuse_bn", "prune_l1", "export_onnx", "quantize_onnx"} <= {entry.name for entry in passes}
    for entry in passes:
        assert f"## `{entry.name}`" in page
        own = generate.pass_options_markdown(entry.name)
        for option in entry.obj.Options.model_fields:
            assert f"| `{option}` |" in own, f"{entry.name}: option {option} is missing"


def test_every_pipeline_key_is_in_the_pipeline_reference(generate: Any) -> None:
    from optkit.config.pipeline import PipelineFile

    page = generate.pipeline_markdown()
    for name, field in PipelineFile.model_fields.items():
        if name != "passes":
            assert f"| `{field.alias or name}` |" in page, f"pipeline key {name} is missing"
    assert "| `measure.drift_tolerance.cosine` |" in page and "| `model.weights.match` |" in page


def test_every_sweep_key_is_in_the_sweep_reference(generate: Any) -> None:
    from optkit.config.sweep import SweepFile

    page = generate.sweep_markdown()
    for name in SweepFile.model_fields:
        assert name == "pipelines" or f"| `{name}` |" in page, f"sweep key {name} is missing"


def test_every_report_field_is_in_the_report_reference(generate: Any) -> None:
    """The report.json reference is built from ``optkit schema --report``: every field of the schema has a row."""
    schema = generate.report_schema()
    page = generate.report_markdown()
    rows = generate.schema_rows(schema)
    assert len(rows) > 10
    for name in schema["properties"]:
        assert f"| `{name}` |" in page
    for row in rows:
        assert f"| `{row.key}` |" in page


def test_schema_rows_flatten_nested_models_into_dotted_keys(generate: Any) -> None:
    from pydantic import BaseModel, Field

    class Inner(BaseModel):
        depth: int = Field(3, description="How deep | how far.")

    class Outer(BaseModel):
        inner: Inner = Field(default_factory=Inner, description="The inner part.")
        maybe: Inner | None = None
        many: list[Inner] = []
        name: str

    rows = {row.key: row for row in generate.schema_rows(Outer.model_json_schema())}
    assert list(rows) == ["inner", "inner.depth", "maybe", "maybe.depth", "many", "many[].depth", "name"]
    assert rows["inner.depth"].default == "3" and rows["name"].default == "required"
    assert "\\|" in generate.rows_table([rows["inner.depth"]])  # a pipe in a description does not split the cell


# --- benchmark pages -------------------------------------------------------------------------------------

def test_every_benchmark_result_has_a_page_with_its_date_command_and_cpu(generate: Any, site: Path) -> None:
    benches = generate.benchmarks()
    reports = sorted((ROOT / "benchmarks" / "results").glob("*.md")) + sorted((ROOT / "benchmarks" / "results").glob("*/report.md"))
    assert sorted(b.report for b in benches) == sorted(reports)
    for bench in benches:
        page = generate.benchmark_markdown(bench)
        for fact in ("| Date |", "| Command |", "| CPU |", "| Noise check |"):
            assert fact in page, f"{bench.slug}: {fact} missing"
        assert (site / "benchmarks" / bench.slug / "index.html").exists()


def test_a_result_without_cpu_or_date_says_not_recorded(generate: Any, tmp_path: Path) -> None:
    report = tmp_path / "x.md"
    report.write_text("# X\n\nbody\n")
    facts = generate.benchmark_facts(generate.Benchmark("x", report, {"command": "python x.py"}))
    assert facts["Date"] == "not recorded" and facts["CPU"].startswith("not recorded") and facts["Command"] == "`python x.py`"
    recorded = {"meta": {"date": "2026-12-06", "cpu": {"model": "AMD EPYC 7B13", "instruction_sets": ["avx2", "fma"]}}}
    facts = generate.benchmark_facts(generate.Benchmark("x", report, recorded))
    assert facts["Date"] == "2026-12-06" and facts["CPU"] == "AMD EPYC 7B13; instruction sets: avx2, fma"


# --- every page in a real browser ------------------------------------------------------------------------

class _Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's name)
        pass


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The built site, served on 127.0.0.1 only."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


class DevTools:
    """A DevTools-protocol session over a WebSocket (RFC 6455, text frames): just what the test needs."""

    def __init__(self, url: str) -> None:
        host, port_path = url.removeprefix("ws://").split(":", 1)
        port, path = port_path.split("/", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=60)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(4096)
        assert b" 101 " in response.split(b"\r\n", 1)[0], response[:200]
        self.buffer = response.split(b"\r\n\r\n", 1)[1]
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    def _recv_exact(self, n: int) -> bytes:
        while len(self.buffer) < n:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise ConnectionError("DevTools closed the connection")
            self.buffer += chunk
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def _recv_message(self) -> dict[str, Any]:
        payload = b""
        while True:
            first, second = self._recv_exact(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack(">H", self._recv_exact(2))[0]
            elif length == 127:
                length = struct.unpack(">Q", self._recv_exact(8))[0]
            payload += self._recv_exact(length)
            if first & 0x80:  # FIN: the last fragment
                return json.loads(payload)

    def send(self, method: str, **params: Any) -> dict[str, Any]:
        """Call a method; events that arrive meanwhile are kept in ``events``."""
        self.next_id += 1
        data = json.dumps({"id": self.next_id, "method": method, "params": params}).encode()
        mask = os.urandom(4)
        header = bytes([0x81]) + (bytes([0x80 | len(data)]) if len(data) < 126 else bytes([0x80 | 126]) + struct.pack(">H", len(data)))
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(data)))
        while True:
            message = self._recv_message()
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for(self, method: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(e.get("method") == method for e in self.events):
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {method} within {timeout} s")
            self.events.append(self._recv_message())


@pytest.fixture(scope="module")
def browser() -> Iterator[DevTools]:
    """Headless Chromium with a fresh profile, and a DevTools session on its one tab."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (apt-get install -y chromium)")
    profile = tempfile.mkdtemp(prefix="optkit-chromium-")
    process = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--remote-debugging-port=0", "about:blank"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        port_file = Path(profile) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and len(port_file.read_text().splitlines()) >= 2):
            assert process.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = int(port_file.read_text().splitlines()[0])
        with urllib_request(f"http://127.0.0.1:{port}/json/list") as targets:
            page = next(t for t in json.load(targets) if t["type"] == "page")
        tools = DevTools(page["webSocketDebuggerUrl"])
        for domain in ("Page", "Runtime", "Log", "Network"):
            tools.send(f"{domain}.enable")
        yield tools
        tools.sock.close()
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(profile, ignore_errors=True)


def urllib_request(url: str) -> Any:
    import urllib.request

    return urllib.request.urlopen(url, timeout=30)


BROKEN_IMAGES = "Array.from(document.images).filter(i => !i.complete || i.naturalWidth === 0).map(i => i.src)"


def page_problems(tools: DevTools, url: str) -> list[str]:
    """Load one page; its console errors, uncaught exceptions, failed requests and broken images."""
    tools.events.clear()
    tools.send("Page.navigate", url=url)
    tools.wait_for("Page.loadEventFired")
    tools.send("Runtime.evaluate", expression="new Promise(r => setTimeout(r, 300))", awaitPromise=True)
    problems = []
    for event in tools.events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.consoleAPICalled" and params["type"] in ("error", "assert"):
            problems.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Runtime.exceptionThrown":
            problems.append("exception: " + params["exceptionDetails"].get("text", ""))
        elif method == "Log.entryAdded" and params["entry"]["level"] == "error":
            problems.append(f"log: {params['entry']['text']} {params['entry'].get('url', '')}")
        elif method == "Network.responseReceived" and params["response"]["status"] >= 400:
            problems.append(f"HTTP {params['response']['status']}: {params['response']['url']}")
        elif method == "Network.loadingFailed" and not params.get("canceled"):
            problems.append(f"failed to load: {params.get('errorText')}")
    broken = tools.send("Runtime.evaluate", expression=BROKEN_IMAGES, returnByValue=True)["result"]["value"]
    problems += [f"missing image: {src}" for src in broken]
    return problems


def test_every_page_opens_in_chromium_without_errors_or_missing_images(site: Path, served: str, browser: DevTools) -> None:
    pages = sorted(p.relative_to(site).parent.as_posix() for p in site.rglob("index.html"))
    assert len(pages) > 30
    problems = {}
    for page in pages:
        url = f"{served}/{'' if page == '.' else page + '/'}"
        if found := page_problems(browser, url):
            problems[page] = found
    assert not problems, json.dumps(problems, indent=1)
    # The zoo page's plots were there to check: images that loaded, with their pixels.
    assert not page_problems(browser, f"{served}/benchmarks/zoo-cpu/")
    loaded = "Array.from(document.images).filter(i => i.naturalWidth > 100).length"
    assert browser.send("Runtime.evaluate", expression=loaded, returnByValue=True)["result"]["value"] >= 2


def test_a_missing_image_and_a_console_error_are_caught(site: Path, served: str, browser: DevTools) -> None:
    """The check itself can fail: a page with a broken image and a console.error is reported."""
    bad = site / "zz-broken.html"
    bad.write_text("<html><body><img src='nope.png'><script>console.error('boom')</script></body></html>")
    try:
        problems = page_problems(browser, f"{served}/zz-broken.html")
    finally:
        bad.unlink()
    assert any("boom" in p for p in problems) and any("nope.png" in p for p in problems), problems
