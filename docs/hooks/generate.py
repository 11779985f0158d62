"""MkDocs hook: the reference pages and the benchmark pages, generated from the code at build time.

A page asks for generated content with a marker line, replaced before Markdown is rendered:

- ``<!-- optkit:pipeline-schema -->``: every key of a pipeline file (``optkit schema``);
- ``<!-- optkit:sweep-schema -->``: every key of a sweep file;
- ``<!-- optkit:pass-options -->``: every installed pass and its options; ``<!-- optkit:pass-options NAME -->``: one pass;
- ``<!-- optkit:hooks -->``: every hook spec of :mod:`optkit.host.hookspecs`, from its docstring;
- ``<!-- optkit:report-schema -->``: every field of report.json (``optkit schema --report``).

One page per benchmark is generated from ``benchmarks/results/`` (a result's Markdown report, headed by
the date, command, CPU and noise check its JSON file records), with the figures it embeds.
Nothing here is written by hand about the code: what the code registers is what the pages list.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
NOT_RECORDED = "not recorded"
MARKER = re.compile(r"^<!-- optkit:(?P<what>[a-z-]+)(?: (?P<arg>\S+))? -->$", re.MULTILINE)


# --- JSON Schema as tables -------------------------------------------------------------------------

@dataclass
class SchemaRow:
    """One key of a schema: its dotted path, type, default and description."""

    key: str
    type: str
    default: str
    description: str


def _resolve(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    return defs[ref.rsplit("/", 1)[-1]] if ref else node


def _type_name(node: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in node:
        target = _resolve(node, defs)
        return "mapping" if "properties" in target else _type_name(target, defs)
    if "enum" in node:
        return " \\| ".join(json.dumps(v) for v in node["enum"])
    if "const" in node:
        return json.dumps(node["const"])
    for combinator in ("anyOf", "oneOf", "allOf"):
        if combinator in node:
            return " \\| ".join(dict.fromkeys(_type_name(n, defs) for n in node[combinator]))
    kind = node.get("type", "any")
    if kind == "array" and "items" in node:
        items = node["items"]
        return f"list of {_type_name(items, defs)}" if isinstance(items, dict) else "list"
    if kind == "object":
        extra = node.get("additionalProperties")
        return f"mapping of {_type_name(extra, defs)}" if isinstance(extra, dict) else "mapping"
    return " \\| ".join(kind) if isinstance(kind, list) else str(kind)


def _objects(node: dict[str, Any], defs: dict[str, Any]) -> list[dict[str, Any]]:
    target = _resolve(node, defs)
    if "properties" in target:
        return [target]
    return [obj for combinator in ("anyOf", "oneOf", "allOf") for n in target.get(combinator, []) for obj in _objects(n, defs)]


def _object_children(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any] | None:
    """The mapping a key holds (also where it may be a string or null instead), else None."""
    objects = _objects(node, defs)
    return objects[0] if len(objects) == 1 else None


def schema_rows(schema: dict[str, Any], defs: dict[str, Any] | None = None, prefix: str = "",
                skip: frozenset[str] = frozenset(), _seen: tuple[str, ...] = ()) -> list[SchemaRow]:
    """Every key of a JSON Schema object, nested mappings flattened into dotted keys.

    Args:
        schema: an object schema (``properties``), as pydantic's ``model_json_schema`` writes it.
        defs: its ``$defs``; default: the schema's own.
        prefix: the dotted path of ``schema`` itself.
        skip: top-level keys left out (documented elsewhere).

    Returns:
        One row per key, parents before their children.
    """
    defs = schema.get("$defs", {}) if defs is None else defs
    required = set(schema.get("required", []))
    rows = []
    for name, node in schema.get("properties", {}).items():
        if name in skip:
            continue
        key = f"{prefix}{name}"
        default = json.dumps(node["default"]) if "default" in node else ("required" if name in required else "")
        description = node.get("description") or _resolve(node, defs).get("description", "")
        rows.append(SchemaRow(key, _type_name(node, defs), default, " ".join(description.split())))
        child = _object_children(node, defs)
        ref = node.get("$ref", key)
        if child is not None and ref not in _seen:
            rows += schema_rows(child, defs, f"{key}.", _seen=(*_seen, ref))
        items = node.get("items")
        if isinstance(items, dict) and (item_child := _object_children(items, defs)) is not None and key not in _seen:
            rows += schema_rows(item_child, defs, f"{key}[].", _seen=(*_seen, key))
    return rows


def _escape(text: str) -> str:
    """Text for a table cell, literally: pipes, brackets (``[1]['feats']`` is no link), stars (globs) and ``<`` escaped."""
    return text.replace("|", "\\|").replace("[", "\\[").replace("*", "\\*").replace("<", "&lt;")


def rows_table(rows: list[SchemaRow]) -> str:
    """A Markdown table of schema rows."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for row in rows:
        cells = (f"`{row.key}`", row.type, f"`{row.default}`" if row.default not in ("", "required") else row.default,
                 _escape(row.description))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --- what the code registers ------------------------------------------------------------------------

def installed_passes() -> list[Any]:
    """Every installed pass, as the registry lists it (``Registered``: name, class, plugin)."""
    from optkit.host.facade import Host

    return sorted(Host().passes, key=lambda entry: entry.name)


def pipeline_schema() -> dict[str, Any]:
    """``optkit schema``: the JSON Schema of pipeline files."""
    from optkit.config.pipeline import pipeline_json_schema

    return pipeline_json_schema(entry.obj for entry in installed_passes())


def report_schema() -> dict[str, Any]:
    """``optkit schema --report``: the JSON Schema of report.json, through the command itself."""
    from click.testing import CliRunner

    from optkit.cli.commands import cli

    result = CliRunner().invoke(cli, ["schema", "--report"])
    if result.exit_code != 0:
        raise RuntimeError("the report.json reference needs `optkit schema --report`, which failed "
                           f"(exit {result.exit_code}): {result.output.strip() or result.exception}")
    return json.loads(result.output)


def hook_specs() -> list[Any]:
    """Every hook spec function of :mod:`optkit.host.hookspecs`, in definition order."""
    from optkit.host import hookspecs

    specs = [f for name, f in vars(hookspecs).items() if name.startswith("optkit_") and hasattr(f, f"{hookspecs.PROJECT}_spec")]
    return sorted(specs, key=lambda f: f.__code__.co_firstlineno)


# --- Markdown of each reference ----------------------------------------------------------------------

def pipeline_markdown() -> str:
    rows = schema_rows(pipeline_schema(), skip=frozenset({"passes"}))
    return (rows_table(rows) + "\n\n`passes` is a list of stages, in order: a pass name, or `name: {options}`; "
            "every installed pass and its options are in [Pass options](pass-options.md).\n")


def sweep_markdown() -> str:
    from optkit.config.sweep import SweepFile

    return rows_table(schema_rows(SweepFile.model_json_schema(), skip=frozenset({"pipelines"}))) + (
        "\n\n`pipelines` maps a name to a list of stages, as a pipeline file's `passes`.\n")


def pass_options_markdown(name: str | None = None) -> str:
    """The options of one installed pass (``name``), or of every installed pass under its own heading."""
    entries = installed_passes()
    if name is not None:
        entries = [e for e in entries if e.name == name]
        if not entries:
            raise KeyError(f"no installed pass is named {name!r} (installed: {', '.join(e.name for e in installed_passes())})")
    parts = []
    for entry in entries:
        options = schema_rows(entry.obj.Options.model_json_schema())
        table = rows_table(options) if options else "No options."
        if name is not None:
            parts.append(table)
            continue
        origin = f"{entry.plugin.distribution} {entry.plugin.version}" if entry.plugin.distribution else entry.plugin.name
        parts.append(f"## `{entry.name}`\n\n{entry.obj.summary}\n\nFrom `{origin}`.\n\n{table}")
    return "\n\n".join(parts) + "\n"


_RST_ROLE = re.compile(r":(?:class|meth|func|data|mod|attr):`~?([^`]+)`")
_PARAM = re.compile(r"^:param (\w+):\s*(.*)$")
_VERSION = re.compile(r"^\.\. versionadded:: (\S+)$")


def _rst_to_markdown(text: str) -> str:
    return _RST_ROLE.sub(r"`\1`", text).replace("``", "`")


def hook_markdown(spec: Any) -> str:
    """One hook's section: its signature, its docstring, a table of its parameters."""
    signature = inspect.signature(spec)
    params = ", ".join(f"{p.name}: {p.annotation}" if p.annotation is not p.empty else p.name
                       for p in signature.parameters.values())
    prose, param_rows, since = [], [], None
    for line in inspect.getdoc(spec).splitlines():
        stripped = line.strip()
        if m := _PARAM.match(stripped):
            param_rows.append([m.group(1), m.group(2)])
        elif m := _VERSION.match(stripped):
            since = m.group(1)
        elif param_rows and stripped and line.startswith(" "):
            param_rows[-1][1] += " " + stripped  # a :param: continued on the next line
        else:
            prose.append(line)
    parts = [f"## `{spec.__name__}`", f"```python\n@hookimpl\ndef {spec.__name__}({params}) -> None\n```",
             _rst_to_markdown("\n".join(prose).strip())]
    if param_rows:
        parts.append("| parameter | meaning |\n|---|---|\n" + "\n".join(
            f"| `{n}` | {_escape(_rst_to_markdown(d))} |" for n, d in param_rows))
    if since:
        parts.append(f"*New in optkit {since}.*")
    return "\n\n".join(parts)


def hooks_markdown() -> str:
    return "\n\n".join(hook_markdown(spec) for spec in hook_specs()) + "\n"


def report_markdown() -> str:
    return rows_table(schema_rows(report_schema())) + "\n"


GENERATORS = {
    "pipeline-schema": lambda arg: pipeline_markdown(),
    "sweep-schema": lambda arg: sweep_markdown(),
    "pass-options": pass_options_markdown,
    "hooks": lambda arg: hooks_markdown(),
    "report-schema": lambda arg: report_markdown(),
}


def expand_markers(markdown: str, where: str) -> str:
    """Replace every ``<!-- optkit:... -->`` marker of a page with what it asks for."""
    def replace(match: re.Match[str]) -> str:
        what = match.group("what")
        if what not in GENERATORS:
            raise ValueError(f"{where}: unknown marker optkit:{what} (known: {', '.join(GENERATORS)})")
        return GENERATORS[what](match.group("arg"))

    return MARKER.sub(replace, markdown)


# --- benchmark pages ----------------------------------------------------------------------------------

@dataclass
class Benchmark:
    """One benchmark report in benchmarks/results and what its JSON file records about the run."""

    slug: str
    report: Path
    data: dict[str, Any]
    images: list[Path] = field(default_factory=list)

    @property
    def heading(self) -> str:
        """The report's own title (its first heading)."""
        first = self.report.read_text(encoding="utf-8").lstrip().splitlines()[0]
        return first.lstrip("# ").strip() if first.startswith("#") else self.slug

    title: str = ""


def _find(data: Any, keys: tuple[str, ...]) -> Any:
    """The first value under one of ``keys``, searched breadth-first through nested mappings and lists."""
    queue = [data]
    while queue:
        node = queue.pop(0)
        if isinstance(node, dict):
            for key in keys:
                if node.get(key) not in (None, ""):
                    return node[key]
            queue += list(node.values())
        elif isinstance(node, list):
            queue += node
    return None


def benchmarks() -> list[Benchmark]:
    """Every benchmark report: ``results/NAME.md`` with ``NAME.json``, and each ``results/DIR/report.md`` (sweeps)."""
    found = []
    for report in sorted(RESULTS.glob("*.md")):
        data_file = report.with_suffix(".json")
        data = json.loads(data_file.read_text(encoding="utf-8")) if data_file.exists() else {}
        found.append(Benchmark(report.stem.replace("_", "-"), report, data))
    for report in sorted(RESULTS.glob("*/report.md")):
        data_file = report.with_name("report.json")
        data = json.loads(data_file.read_text(encoding="utf-8")) if data_file.exists() else {}
        images = sorted(report.parent.glob("plots/*.png"))
        found.append(Benchmark(f"zoo-{report.parent.name}", report, data, images))
    headings = [b.heading for b in found]
    for bench in found:  # two reports of one script (other settings) keep their own page titles
        bench.title = bench.heading if headings.count(bench.heading) == 1 else f"{bench.heading} ({bench.slug})"
    return found


def _cpu(data: dict[str, Any]) -> str:
    cpu = _find(data, ("cpu",))
    model = _find(cpu, ("model", "name", "brand")) if isinstance(cpu, dict) else cpu
    model = model or _find(data, ("cpu_model", "cpu_name"))
    flags = _find(cpu, ("instruction_sets", "isa", "flags")) if isinstance(cpu, dict) else None
    flags = flags or _find(data, ("instruction_sets", "cpu_flags", "isa"))
    if isinstance(flags, list):
        flags = ", ".join(map(str, flags))
    return f"{model or NOT_RECORDED}; instruction sets: {flags or NOT_RECORDED}"


def _noise(data: dict[str, Any]) -> str:
    noise = _find(data, ("noise",))
    if not isinstance(noise, dict) or "noisy" not in noise:
        return NOT_RECORDED
    figures = f"cv {noise.get('cv')}, CPU share {noise.get('cpu_share')}"
    return f"busy ({figures}): latency figures are noisy" if noise["noisy"] else f"passed ({figures})"


def _date(bench: Benchmark) -> str:
    date = _find(bench.data, ("date", "created"))
    return str(date)[:10] if date else NOT_RECORDED


def _command(bench: Benchmark) -> str:
    command = _find(bench.data, ("command",))
    if command is None:
        found = re.search(r"^Command: `([^`]+)`", bench.report.read_text(encoding="utf-8"), re.MULTILINE)
        command = found and found.group(1)
    return f"`{command}`" if command else NOT_RECORDED


def benchmark_facts(bench: Benchmark) -> dict[str, str]:
    """Date, command, CPU, threads and noise check of a benchmark run, ``not recorded`` where its file lacks one."""
    env = _find(bench.data, ("environment",)) or {}
    threads = _find(bench.data, ("threads",))
    software = ", ".join(f"{k} {env[k]}" for k in ("python", "torch", "torchvision", "onnxruntime") if k in env)
    return {"Date": _date(bench), "Command": _command(bench), "CPU": _cpu(bench.data),
            "Threads": str(threads) if threads is not None else NOT_RECORDED,
            "Noise check": _noise(bench.data), "Software": software or NOT_RECORDED}


def benchmark_markdown(bench: Benchmark) -> str:
    """A benchmark's page: its facts, then its report without its title (the page has it)."""
    body = bench.report.read_text(encoding="utf-8").lstrip().split("\n", 1)
    body = body[1] if body[0].startswith("#") and len(body) > 1 else "\n".join(body)
    body = re.sub(r"^#(#+)", r"\1", body, flags=re.MULTILINE)  # the report's sections under the page title
    facts = "\n".join(f"| {k} | {v} |" for k, v in benchmark_facts(bench).items())
    source = bench.report.relative_to(ROOT).as_posix()
    return (f"# {bench.title}\n\n| run | |\n|---|---|\n{facts}\n\n"
            f"Generated from `{source}`. Speed-ups are medians with their 95% interval; **tie**: the interval includes 1.\n\n"
            f"{body.strip()}\n")


def benchmarks_index() -> str:
    rows = "\n".join(f"| [{b.title}]({b.slug}.md) | {_date(b)} | {_command(b)} |" for b in benchmarks())
    return ("# Benchmarks\n\nEach page is generated from a report in `benchmarks/results/`, written by the script its "
            "command names. Every figure is quoted with the run's date, command, CPU and noise check; latency "
            "speed-ups with their 95% interval.\n\n| benchmark | date | command |\n|---|---|---|\n" + rows + "\n")


# --- MkDocs events ------------------------------------------------------------------------------------

def on_config(config: Any) -> Any:
    """The Benchmarks section of the navigation lists every generated benchmark page."""
    pages = ["benchmarks/index.md", *({b.title: f"benchmarks/{b.slug}.md"} for b in benchmarks())]
    for entry in config["nav"]:
        if isinstance(entry, dict) and "Benchmarks" in entry:
            entry["Benchmarks"] = pages
    return config


def on_files(files: Any, config: Any) -> Any:
    from mkdocs.structure.files import File

    files.append(File.generated(config, "benchmarks/index.md", content=benchmarks_index()))
    for bench in benchmarks():
        files.append(File.generated(config, f"benchmarks/{bench.slug}.md", content=benchmark_markdown(bench)))
        for image in bench.images:
            uri = f"benchmarks/{image.relative_to(bench.report.parent).as_posix()}"
            if files.get_file_from_path(uri) is None:
                files.append(File.generated(config, uri, abs_src_path=str(image)))
    return files


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return expand_markers(markdown, page.file.src_uri)

