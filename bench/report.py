"""The bench's outputs: a markdown table of medians and ratios, the goals, JSON and a PNG.

Ratios: ``x bare`` is a tool's median over the bare runtime's (``runc run`` of a
prepared bundle for ``run``, ``runc exec`` for ``exec``); ``dockyard/tool`` is
Dockyard's median over that tool's (below 1: Dockyard is faster). The goals are
those of issue 8, each computed from this run's own numbers.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

BARE = {"run --rm true": "runc run (bundle)", "exec true": "runc exec"}


def _median(case: dict[str, Any], tool: str) -> float | None:
    entry = case.get(tool)
    if not entry or not entry.get("samples_ms"):
        return None
    return float(statistics.median(entry["samples_ms"]))


def goals(data: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 8's goals against this run: ``{goal, value, target, met, command}``."""
    cases = data["cases"]
    out: list[dict[str, Any]] = []

    def ratio(case: str, a: str, b: str) -> float | None:
        ma, mb = _median(cases.get(case, {}), a), _median(cases.get(case, {}), b)
        return None if ma is None or mb is None else ma / mb

    def add(goal: str, value: float | None, target: str, met: bool | None, command: str) -> None:
        out.append({"goal": goal, "value": value, "target": target, "met": met, "command": command})

    r = ratio("run --rm true", "dockyard", "ctr")
    add("run --rm median / ctr run --rm", r, "<= 0.9", None if r is None else r <= 0.9,
        "dockyard run --rm IMG true  vs  ctr run --rm IMG id true")  # fmt: skip
    r = ratio("exec true", "dockyard", "ctr")
    add("exec median / ctr task exec", r, "<= 0.9", None if r is None else r <= 0.9,
        "dockyard exec C true  vs  ctr t exec --exec-id X C true")  # fmt: skip
    r = ratio("start 20 at once", "dockyard", "ctr")
    add("20 concurrent detached starts: wall / ctr's", r, "<= 0.9", None if r is None else r <= 0.9,
        "20 x dockyard run -d ... sleep 600 at once  vs  20 x ctr run -d ...")  # fmt: skip
    c100 = cases.get("start 100 at once", {}).get("dockyard")
    if c100 is not None:
        ok = bool(c100.get("samples_ms")) and not c100.get("n_errors")
        add("100 concurrent detached starts complete without error", 1.0 if ok else 0.0, "no error", ok,
            "100 x dockyard run -d ... sleep 600 at once")  # fmt: skip
    mem = data.get("memory", {}).get("per container (20 running)", {})
    ours = mem.get("dockyard-shim", {}).get("pss_kib_median")
    theirs = mem.get("containerd-shim-runc-v2 (ctr)", {}).get("pss_kib_median")
    r = None if not ours or not theirs else ours / theirs
    add("idle shim PSS / containerd-shim-runc-v2's", r, "<= 1.0", None if r is None else r <= 1.0,
        "smaps_rollup Pss of each idle shim (asleep as its monitor after shim_idle_s), 20 running")  # fmt: skip
    r = ratio("run --rm true", "dockyard", "dockyard --runtime crun")
    add("run --rm with runc / with --runtime crun (speed-up)", r, ">= 1.3", None if r is None else r >= 1.3,
        "dockyard run --rm IMG true  vs  dockyard run --rm --runtime crun IMG true")  # fmt: skip
    return out


def markdown(data: dict[str, Any]) -> str:
    """The whole report as markdown."""
    lines = [f"Host: {data.get('host', '')}", ""]
    if data.get("kernel_tuning"):
        from bench.host import describe

        lines[1:1] = [f"Kernel: {describe(data['kernel_tuning'])}"]
    if "gap_ms" in data:
        lines.insert(
            len(lines) - 1, f"Runs: {data.get('runs')} rounds, each timed command after {data['gap_ms']:g} ms of quiet"
        )
    for case, tools in data["cases"].items():
        bare = BARE.get(case)
        bare_ms = _median(tools, bare) if bare else None
        ours = _median(tools, "dockyard") or _median(tools, "dockyard: run -d")
        lines.append(f"### {case}")
        lines.append("")
        head = "| tool | median ms | p10 | p90 | n | errors |"
        sep = "|---|---:|---:|---:|---:|---:|"
        if bare_ms:
            head += f" x {bare} |"
            sep += "---:|"
        head += " dockyard / tool |"
        sep += "---:|"
        lines += [head, sep]
        for tool, entry in tools.items():
            med = entry.get("median_ms")
            row = f"| {tool} | {_fmt(med)} | {_fmt(entry.get('p10_ms'))} | {_fmt(entry.get('p90_ms'))} | "
            row += f"{len(entry.get('samples_ms', []))} | {entry.get('n_errors', 0)} |"
            if bare_ms:
                row += f" {med / bare_ms:.2f} |" if med else " |"
            mine = ours
            if ":" in tool:  # "dockyard: run -d" against "ctr: run -d"
                mine = _median(tools, "dockyard" + tool[tool.index(":") :])
            row += f" {mine / med:.2f} |" if mine and med and not tool.startswith("dockyard") else " |"
            lines.append(row)
        lines.append("")
    for section, entries in data.get("memory", {}).items():
        lines.append(f"### memory: {section}")
        lines.append("")
        lines.append("| process | RSS KiB | PSS KiB | count |")
        lines.append("|---|---:|---:|---:|")
        for name, v in entries.items():
            rss = v.get("rss_kib", v.get("rss_kib_median"))
            pss = v.get("pss_kib", v.get("pss_kib_median"))
            lines.append(f"| {name} | {_fmt(rss, 0)} | {_fmt(pss, 0)} | {v.get('count', 1)} |")
        lines.append("")
    lines.append("### goals (issue 8)")
    lines.append("")
    lines.append("| goal | this run | target | met | measured by |")
    lines.append("|---|---:|---|---|---|")
    for g in data.get("goals", []):
        met = "n/a" if g["met"] is None else ("yes" if g["met"] else "**no**")
        lines.append(f"| {g['goal']} | {_fmt(g['value'], 2)} | {g['target']} | {met} | `{g['command']}` |")
    if data.get("notes"):
        lines += ["", "Notes:", *[f"- {n}" for n in data["notes"]]]
    return "\n".join(lines) + "\n"


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return ""
    return f"{value:.{digits}f}"


def plot(data: dict[str, Any], out: Path) -> None:
    """Box plots of the latency distributions, one panel per case (log scale), as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = {c: t for c, t in data["cases"].items() if any(e.get("samples_ms") for e in t.values())}
    fig, axes = plt.subplots(len(cases), 1, figsize=(10, 2.2 + 1.1 * sum(len(t) for t in cases.values()) / len(cases)
                                                        * len(cases)), squeeze=False)  # fmt: skip
    for ax, (case, tools) in zip(axes[:, 0], cases.items(), strict=True):
        names = [t for t, e in tools.items() if e.get("samples_ms")]
        samples = [tools[t]["samples_ms"] for t in names]
        ax.boxplot(samples, orientation="horizontal", tick_labels=names, showfliers=True, whis=(5, 95))
        for i, s in enumerate(samples, start=1):
            ax.plot(s, [i] * len(s), "|", alpha=0.35, color="tab:blue")
        ax.set_xscale("log")
        ax.set_title(case, fontsize=10, loc="left")
        ax.tick_params(labelsize=8)
        ax.set_xlabel("ms (log scale)", fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def write(data: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``latest.json``, ``latest.md`` and ``latest.png`` into ``out_dir``; return their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "latest.json", "md": out_dir / "latest.md", "png": out_dir / "latest.png"}
    paths["json"].write_text(json.dumps(data, indent=1))
    paths["md"].write_text(markdown(data))
    try:
        plot(data, paths["png"])
    except ImportError:
        paths.pop("png")
    return paths
