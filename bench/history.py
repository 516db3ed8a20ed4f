"""Every full run leaves a small summary in results/history/: the headline ratios of the commit it
measured. Across commits they show what each change did; a ratio that falls by more than
REGRESSION from the entry before is called out in the report.

    bench/.venv/bin/python bench/history.py      # redraw charts/history.png from the entries
"""

import json
import sys
from pathlib import Path

import report

RESULTS = Path(__file__).resolve().parent / "results"
HISTORY = RESULTS / "history"
REGRESSION = 0.10

# (key, label, scenario, peer or field, higher_is_better). Ratios are pronghorn ÷ peer; the
# latency entries are pronghorn's own p99 in ms.
HEADLINES = [
    ("hello_over_nginx", "hello ÷ nginx", "hello", "nginx", True),
    ("hello_over_granian", "hello ÷ granian", "hello", "granian", True),
    ("hello_over_uvicorn", "hello ÷ uvicorn", "hello", "uvicorn", True),
    ("pipelined_over_nginx", "pipelined ÷ nginx", "pipelined", "nginx", True),
    ("conns10k_over_granian", "10k conns ÷ granian", "conns10k", "granian", True),
    ("p99_ms_20k", "p99 at 20k req/s (ms)", "rate20k", "p99_ms", False),
    ("p99_ms_40k", "p99 at 40k req/s (ms)", "rate40k", "p99_ms", False),
]


def _median(row, key="value"):
    v = row.get(key) if row and row.get("status") == "ok" else None
    return v["median"] if v else None


def summarize(results):
    """The history entry of one full run (ratios paired per round, as in the report)."""
    meta = results["meta"]
    rows = {(sc["key"], r["id"]): r for sc in results["scenarios"] for r in sc["rows"]}
    values = {}
    for key, _, scenario, other, _ in HEADLINES:
        ph = rows.get((scenario, "pronghorn"))
        if other.endswith("_ms"):
            v = _median(ph, other)
        else:
            peer = rows.get((scenario, other))
            ok = ph and peer and ph.get("status") == "ok" and peer.get("status") == "ok"
            v = report.paired_ratio(ph, peer)[0] if ok else None
        values[key] = None if v is None else round(v, 3)
    hello = _median(rows.get(("hello", "pronghorn")))
    return {
        "commit": meta["commit"],
        "date": meta["date"],
        "dirty": meta.get("pronghorn_source_dirty", False),
        "hello_rps": round(hello) if hello else None,
        **values,
    }


def load():
    """Every entry, oldest first."""
    if not HISTORY.is_dir():
        return []
    entries = [json.loads(p.read_text()) for p in sorted(HISTORY.glob("*.json"))]
    return sorted(entries, key=lambda e: e["date"])


def record(results):
    """Writes the run's entry (one per commit: a rerun replaces it); returns it."""
    entry = summarize(results)
    HISTORY.mkdir(parents=True, exist_ok=True)
    for old in HISTORY.glob(f"*-{entry['commit']}.json"):
        old.unlink()
    (HISTORY / f"{entry['date'][:10]}-{entry['commit']}.json").write_text(
        json.dumps(entry, indent=1) + "\n"
    )
    return entry


def regressions(entries):
    """What got more than REGRESSION worse in the last entry against the one before it."""
    if len(entries) < 2:
        return []
    prev, last = entries[-2], entries[-1]
    out = []
    for key, label, _, _, higher in HEADLINES:
        a, b = prev.get(key), last.get(key)
        if a is None or b is None:
            continue
        worse = (a - b) / a if higher else (b - a) / a
        if worse > REGRESSION:
            out.append(
                f"{label}: {b:.2f} at {last['commit']}, was {a:.2f} at {prev['commit']} "
                f"({worse:.0%} worse)"
            )
    return out


def markdown(entries):
    """The report's section on history: a table of the last entries and the regressions."""
    if not entries:
        return []
    lines = ["## Across commits", ""]
    worse = regressions(entries)
    if worse:
        lines += ["**Regressions against the previous entry:**", ""]
        lines += [f"- {w}" for w in worse] + [""]
    else:
        lines += [f"No headline figure fell by more than {REGRESSION:.0%} from the previous "
                  "entry.", ""]  # fmt: skip
    lines += [
        "| commit | date | " + " | ".join(label for _, label, *_ in HEADLINES) + " |",
        "|---|---|" + "---|" * len(HEADLINES),
    ]
    for e in entries[-12:]:
        cells = []
        for key, _, _, _, higher in HEADLINES:
            v = e.get(key)
            cells.append("—" if v is None else (f"{v:.2f}×" if higher else f"{v:.2f}"))
        lines.append(f"| {e['commit']} | {e['date'][:10]} | " + " | ".join(cells) + " |")
    lines += ["", "![history](charts/history.png)"]
    return lines


def chart(entries, path):
    """Ratios (left) and p99 (right) across commits; None if matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not entries:
        return None
    xs = list(range(len(entries)))
    labels = [e["commit"] for e in entries]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key, label, _, _, higher in HEADLINES:
        ys = [e.get(key) for e in entries]
        if all(y is None for y in ys):
            continue
        ax = left if higher else right
        ax.plot(xs, [float("nan") if y is None else y for y in ys], marker="o", label=label)
    left.axhline(1.0, color="grey", linewidth=0.8, linestyle=":")
    left.set_title("pronghorn ÷ peer (higher is better)")
    right.set_title("pronghorn p99, fixed rate (lower is better)")
    right.set_ylabel("ms")
    right.set_yscale("log")
    for ax in (left, right):
        ax.set_xticks(xs, labels, rotation=45, ha="right", fontsize=8)
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def main():
    entries = load()
    out = chart(entries, RESULTS / "charts" / "history.png")
    print("\n".join(markdown(entries)))
    return 0 if out or not entries else 1


if __name__ == "__main__":
    sys.exit(main())
