"""Markdown report of a GPU run (``benchmarks/gpu_run.sh``): tables and the targets checked.

    python benchmarks/gpu_report.py OUT/rows.jsonl OUT/run.log > OUT/gpu_report.md

``rows.jsonl`` holds one JSON object per measured row (``benchmarks/train_step.py --json``) or
per skipped step; the log gives the GPU tests' printed measurements and the DataLoader rate.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

#: The published code on one H100, 8 + 8 images (docs/method.md), per precision.
PUBLISHED_MS = {"32-true": 285.0, "bf16-mixed": 329.0}
#: Targets: ms per 8 + 8 iteration by (option, precision), None = the fastest option; peak
#: GiB (bf16, 8 + 8); 32 + 32 over 8 + 8 time. The default path (``baseline``: the CUDA graph
#: on one GPU) aims at 25 ms, then 15.
TARGET_MS = {
    ("baseline", "bf16-mixed"): 25.0,
    ("eager", "bf16-mixed"): 120.0,
    (None, "32-true"): 45.0,
}
STRETCH_MS = {("baseline", "bf16-mixed"): 15.0}
TARGET_PEAK_GIB = 5.0
TARGET_SCALING = 4.5
#: The DataLoader must deliver this many times the images per second the GPU consumes.
TARGET_DATA_MARGIN = 1.5


def load(rows_path: Path) -> tuple[list[dict], list[dict], list[dict]]:
    rows, profiles, skipped = [], [], []
    for line in rows_path.read_text().splitlines():
        if not line.strip():
            continue
        row = json.loads(line)
        if "skipped" in row:
            skipped.append(row)
        elif row.get("profile"):
            profiles.append(row)
        else:
            rows.append(row)
    return rows, profiles, skipped


def best(rows: list[dict], precision: str, batch: str) -> dict | None:
    chosen = [r for r in rows if r["precision"] == precision and r["batch"] == batch]
    return min(chosen, key=lambda r: r["ms"]) if chosen else None


def report(rows: list[dict], profiles: list[dict], skipped: list[dict], log: str) -> str:
    out = ["# GPU run", ""]
    if rows:
        first = rows[0]
        out.append(
            f"{first['machine']}; torch {first['torch']}, lightning {first['lightning']}; "
            f"{first['date']}; {first['networks']} networks. ms/iter: mean wall clock per "
            "iteration inside a Lightning fit (the loop included); GPU ms: median GPU time per "
            "iteration (CUDA events)."
        )
        out.append("")
    out += [
        "| option | precision | batch | ms / iter | GPU ms | images / s | peak GiB "
        "| vs published |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in rows:
        published = PUBLISHED_MS.get(r["precision"])
        speedup = (
            f"{published / r['ms']:.1f}x"
            if published and r["batch"] == "8+8" and r["networks"] == "default"
            else "-"
        )
        out.append(
            f"| {r['option']} | {r['precision']} | {r['batch']} | {r['ms']:.1f} | "
            f"{r['median_gpu_ms']:.1f} | {r['images_s']:.0f} | {r['peak_gib']:.2f} | {speedup} |"
        )
    out += ["", "## Targets (8 + 8 unless stated)", ""]
    for (option, precision), target in TARGET_MS.items():
        candidates = [r for r in rows if option is None or r["option"] == option]
        row = best(candidates, precision, "8+8")
        what = f"{option or 'fastest'}, {precision}"
        if row is None:
            out.append(f"- {what}: not measured")
            continue
        verdict = "met" if row["ms"] <= target else "missed"
        stretch = STRETCH_MS.get((option, precision))
        if stretch is not None:
            verdict += f"; <= {stretch:g} ms: {'met' if row['ms'] <= stretch else 'missed'}"
        out.append(
            f"- {what}: {row['ms']:.1f} ms ({row['option']}), target <= {target:g} ms: {verdict}"
        )
        if option == "baseline" and precision == "bf16-mixed":
            peak = row["peak_gib"]
            out.append(
                f"- peak memory, bf16, {row['option']}: {peak:.2f} GiB, target <= "
                f"{TARGET_PEAK_GIB:g}: {'met' if peak <= TARGET_PEAK_GIB else 'missed'}"
            )
            large = [
                r
                for r in rows
                if r["option"] == row["option"]
                and r["precision"] == precision
                and r["batch"] == "32+32"
            ]
            if large:
                ratio = large[0]["ms"] / row["ms"]
                out.append(
                    f"- 32 + 32 time / 8 + 8 time, bf16, {row['option']}: {ratio:.2f}, target "
                    f"<= {TARGET_SCALING:g}: {'met' if ratio <= TARGET_SCALING else 'missed'}"
                )
            consumed = row["images_s"]
            match = re.search(r"training DataLoader.*?: (\d+)", log)
            if match:
                supplied = float(match.group(1))
                margin = supplied / consumed
                out.append(
                    f"- data: the DataLoader (default workers) gives {supplied:.0f} images/s, "
                    f"the GPU consumes {consumed:.0f} ({row['option']}): {margin:.1f}x, target "
                    f">= {TARGET_DATA_MARGIN:g}x: "
                    f"{'met' if margin >= TARGET_DATA_MARGIN else 'missed'}"
                )
    if profiles:
        out += [
            "",
            "## Profile (torch.profiler, bf16, 8 + 8)",
            "",
            "| option | kernels / iteration | GPU busy | ms / iteration (profiled) | top kernels "
            "(ms / iteration) |",
            "| --- | ---: | ---: | ---: | --- |",
        ]
        for r in profiles:
            p = r["profile"]
            top = "; ".join(f"{name} {ms:.2f}" for name, ms in p["top_kernels_ms_per_iteration"])
            out.append(
                f"| {r['option']} | {p['kernels_per_iteration']:.0f} | "
                f"{p['gpu_busy_fraction']:.0%} | {p['profiled_ms_per_iteration']:.1f} | {top} |"
            )
    tests = [
        line
        for line in log.splitlines()
        if line.startswith(("[cuda_graph", "[resume", "[stream_batching"))
    ]
    summary = re.findall(r"^\d+ (?:passed|failed).*$", log, flags=re.M)
    if tests or summary:
        out += ["", "## GPU tests", ""]
        out += [f"- {line}" for line in tests + summary]
    if skipped:
        out += ["", "## Not measured", ""]
        out += [f"- {s['skipped']}: {s['why']}" for s in skipped]
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    rows_path = Path(args[0])
    log = Path(args[1]).read_text() if len(args) > 1 else ""
    print(report(*load(rows_path), log), end="")


if __name__ == "__main__":
    main()
