"""Turn the samples into results: medians and spreads, ratios, targets, Markdown and charts."""

import statistics
from dataclasses import asdict
from pathlib import Path

UNITS = {"rps": "req/s", "latency": "ms (p99)", "rss": "KiB per conn"}
# The load generator used at least this much of its one core: the figure may be its ceiling.
CLIENT_BOUND = 0.95
TOOLS = {
    "wrk": "wrk",
    "h2load": "h2load",
    "oha": "oha --latency-correction",
    "idle": "bench/idle.py + /proc RSS",
    "wsload": "bench/wsload (Go, gorilla/websocket; no compression offered; every echo checked)",
}

# The WebSocket rows' peers (run.py WS_PEERS): their targets are against the best of them.
WS_PEERS = ("granian", "uvicorn", "uvicorn-wsproto", "uvicorn-sansio", "hypercorn")

# (label, scenario, peer, kind, threshold). peer: a server id, None, or a tuple of ids with kind
# "best": pronghorn ÷ the best of them, paired per round.
TARGETS = [
    ("pronghorn ≥ 0.8× nginx, scenario 1", "hello", "nginx", "ratio", 0.8),
    ("pronghorn ≥ 2× granian, scenario 1", "hello", "granian", "ratio", 2.0),
    ("pronghorn ≥ 4× uvicorn, scenario 1", "hello", "uvicorn", "ratio", 4.0),
    ("pronghorn ≥ 0.8× nginx, pipelined ×16", "pipelined", "nginx", "ratio", 0.8),
    ("p99 < 2 ms at 20,000 req/s, zero errors", "rate20k", None, "p99", 2.0),
    ("p99 < 5 ms at 40,000 req/s, zero errors", "rate40k", None, "p99", 5.0),
    ("pronghorn ≥ 1.5× granian, 10,000 conns, zero errors", "conns10k", "granian", "ratio", 1.5),
    ("≤ 2 KiB RSS per idle connection", "idle_rss", None, "rss", 2.0),
    ("pronghorn ≥ 1.5× granian, HTTP/2 64 conns", "h2_hello", "granian", "ratio", 1.5),
    ("pronghorn ≥ 0.7× nginx, HTTP/2 64 conns", "h2_hello", "nginx", "ratio", 0.7),
    ("pronghorn ≥ 1.5× granian, HTTP/2 16 × 32 streams", "h2_streams", "granian", "ratio", 1.5),
    ("pronghorn ≥ 0.7× nginx, HTTP/2 16 × 32 streams", "h2_streams", "nginx", "ratio", 0.7),
    ("pronghorn ≥ 1.5× granian, WSGI hello", "wsgi_hello", "granian", "ratio", 1.5),
    ("pronghorn ≥ 5× gunicorn, WSGI hello", "wsgi_hello", "gunicorn", "ratio", 5.0),
    ("pronghorn ≥ 1.5× granian, TLS hello (HTTP/1.1 keep-alive)", "tls_hello", "granian", "ratio",
     1.5),
    ("pronghorn ≥ 1.2× uvicorn, new TLS connections (handshakes/s)", "tls_handshakes", "uvicorn",
     "ratio", 1.2),
    ("pronghorn ≥ 2× the best peer, WebSocket echo 64 B × 64 conns (msgs/s)", "ws_echo", WS_PEERS,
     "best", 2.0),
    ("pronghorn ≥ 2× the best peer, WebSocket 1 MiB round trips", "ws_1mib", WS_PEERS, "best",
     2.0),
]  # fmt: skip


def _who(r):
    """' (name pid 0.40, ...)': the processes the foreign CPU time came from."""
    top = r.get("foreign_top") or []
    return " (" + ", ".join(f"{n} {pid} {c:.2f}" for n, pid, c in top) + ")" if top else ""


def describe_sample(sc, label, r):
    """One progress line for the log."""
    head = f"[{r['round']}] {sc.key:<11} {label:<10} {r.get('elapsed_s', 0):4.0f}s"
    unit = sc.unit or UNITS[sc.metric]
    if "failed" in r:
        return f"{head} FAILED: {r['failed']}"
    flag = ""
    if r.get("disturbed"):
        flag = (
            f"  !! disturbed: other processes {r['foreign_cpu']:.2f}{_who(r)}, steal "
            f"{r.get('steal_cpu', 0):.2f} cores (not counted)"
        )
    elif r.get("requests") == 0:
        flag = "  !! no request completed (not counted)"
    elif not r["valid"]:
        flag = f"  !! errors={r['errors']} non2xx={r['non2xx']} (not counted)"
    if sc.metric == "latency":
        return (
            f"{head} p50 {_ms(r['p50_ms'])} p99 {_ms(r['p99_ms'])} p99.9 {_ms(r['p999_ms'])} ms"
            f" at {r['rps']:,.0f} req/s{flag}"
        )
    if sc.metric == "rss":
        return (
            f"{head} {r['value']:.2f} KiB/conn ({r['rss_before_kib'] / 1024:.1f} → "
            f"{r['rss_after_kib'] / 1024:.1f} MiB, {r['conns']} conns in "
            f"{r['connect_seconds']:.1f}s){flag}"
        )
    if sc.message:  # WebSocket echo: round-trip latency and both sides' cores too
        mib = f", {_mib(r['bytes_per_s'])} MiB/s" if sc.transfer else ""
        return (
            f"{head} {r['rps']:,.0f} {unit}{mib}, round trip p50 {_ms(r['p50_ms'])} p99 "
            f"{_ms(r['p99_ms'])} ms, cores: server {r.get('server_cpu', 0):.2f}, wsload "
            f"{r.get('client_cpu', 0):.2f}{flag}"
        )
    if sc.transfer and r.get("bytes_per_s") is not None:
        return f"{head} {r['rps']:,.0f} req/s, {_mib(r['bytes_per_s'])} MiB/s{flag}"
    if r.get("tls"):  # what was negotiated, and how busy the server and the client were
        cpu = ""
        if r.get("client_cpu") is not None and r.get("server_cpu") is not None:
            cpu = f", cores: server {r['server_cpu']:.2f}, client {r['client_cpu']:.2f}"
        return f"{head} {r['rps']:,.0f} {unit} ({r['tls']}{cpu}){flag}"
    return f"{head} {r['rps']:,.0f} {unit}{flag}"


def _mib(bytes_per_s):
    return f"{bytes_per_s / 2**20:,.0f}"


def _ms(v):
    return "?" if v is None else f"{v:.2f}"


def _stats(values):
    if not values:
        return None
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def build(meta, scenarios, servers, samples, notes):
    """The results document: what the JSON file holds and the table and charts are made of."""
    out = {"meta": meta, "scenarios": [], "targets": []}
    for sc in scenarios:
        rows = []
        for s in servers:
            if not sc.has_row(s):
                continue
            got = samples[sc.key][s.id]
            if sc.metric == "rss":
                got = _first_per_round(got)
            for x in got:  # nothing answered in time: no figure, even without an error
                if x.get("requests") == 0:
                    x["valid"] = False
            row = {"server": s.label, "id": s.id, "samples": got}
            valid = [x for x in got if x["valid"]]
            row["runs"] = len({x["round"] for x in got})
            row["valid_runs"] = len(valid)
            row["flags"] = [_flag(x) for x in got if not x["valid"]]
            if not got:
                row["status"] = notes[sc.key].get(s.id, "not run")
            elif not valid:
                row["status"] = "no valid run"
            else:
                row["status"] = "ok"
                row["value"] = _stats([x["value"] for x in valid])
                row["rps"] = _stats([x["rps"] for x in valid if "rps" in x])
                if sc.transfer:
                    row["transfer"] = _stats(
                        [x["bytes_per_s"] for x in valid if "bytes_per_s" in x]
                    )
                if sc.metric == "latency" or sc.message:
                    for k in ("p50_ms", "p99_ms", "p999_ms"):
                        row[k] = _stats([x[k] for x in valid if x.get(k) is not None])
                if sc.metric == "latency":
                    row["tool"] = valid[0].get("tool", TOOLS["oha"])
                if sc.metric == "rss":
                    row["rss_before_kib"] = _stats([x["rss_before_kib"] for x in valid])
                    row["rss_after_kib"] = _stats([x["rss_after_kib"] for x in valid])
            seen = [x["pathsend"] for x in got if "pathsend" in x]
            if seen:  # the file scenario: did the app see http.response.pathsend?
                row["pathsend"] = seen[-1]
            seen = [x["tls"] for x in got if "tls" in x]
            if seen:  # a TLS scenario: the version, cipher and ALPN protocol negotiated
                row["tls"] = seen[-1]
            for k in ("client_cpu", "server_cpu"):  # cores the load generator, the server used
                cpu = [x[k] for x in valid if x.get(k) is not None]
                if cpu:
                    row[k] = _stats(cpu)
            # figure ÷ the server's cores: its rate were the load generator not the limit (7c),
            # or were the server not waiting for the client half the time (8b, one connection)
            if sc.reconnect or sc.message:
                per_core = [x["rps"] / x["server_cpu"] for x in valid if x.get("server_cpu")]
                if per_core:
                    row["per_server_core"] = _stats(per_core)
            rows.append(row)
        entry = asdict(sc)
        entry.update(unit=sc.unit or UNITS[sc.metric], tool=TOOLS[sc.tool], rows=rows)
        out["scenarios"].append(entry)
    _ratios(out)
    out["targets"] = _targets(out)
    return out


def _first_per_round(samples):
    """RSS: only a fresh server's first measurement means anything (a repeat finds the memory
    already allocated), and CPU contention does not change RSS, so it is never "disturbed"."""
    out, seen = [], set()
    for x in samples:
        if x["round"] in seen:
            continue
        seen.add(x["round"])
        if x.get("disturbed"):
            x = dict(x, disturbed=False, valid="failed" not in x and x["errors"] == 0)
        out.append(x)
    return out


def _flag(x):
    if "failed" in x:
        return f"round {x['round']}: {x['failed']}"
    if x.get("requests") == 0:
        return f"round {x['round']}: no request completed within the measurement"
    if x.get("disturbed"):
        return (
            f"round {x['round']}: disturbed (other work {x['foreign_cpu']:.2f}{_who(x)}, steal "
            f"{x.get('steal_cpu', 0):.2f} cores)"
        )
    raw = x.get("raw", {})
    detail = ""
    if isinstance(raw, dict) and "connect" in raw:
        parts = [f"{k} {raw[k]}" for k in ("connect", "read", "write", "timeout", "status")]
        detail = " (" + ", ".join(p for p in parts if not p.endswith(" 0")) + ")"
    elif isinstance(raw, dict) and raw.get("idle_conns"):
        detail = " (a connection completed no request: h2load's per-connection min req/s is 0)"
    elif isinstance(raw, dict) and isinstance(raw.get("errors"), dict):  # wsload
        parts = [f"{k} {v}" for k, v in raw["errors"].items() if v]
        first = raw.get("first_error")
        detail = " (" + ", ".join(parts) + (f"; first: {first}" if first else "") + ")"
    elif isinstance(raw, dict) and raw.get("errorDistribution"):
        detail = " (" + ", ".join(f"{k}: {v}" for k, v in raw["errorDistribution"].items()) + ")"
    return f"round {x['round']}: {x['errors']} errors, {x['non2xx']} non-2xx{detail}"


def _median(row, key="value"):
    v = row.get(key)
    return v["median"] if v else None


def _ratios(out):
    """pronghorn against each row, and each row against nginx (the ceiling)."""
    by_key = {sc["key"]: sc for sc in out["scenarios"]}
    for sc in out["scenarios"]:
        ph = next((r for r in sc["rows"] if r["id"] == "pronghorn" + _suffix(sc)), None)
        ceiling_sc = by_key.get(sc["ceiling"] or sc["key"], sc)
        ng = next((r for r in ceiling_sc["rows"] if r["id"] == "nginx"), None)
        p, n = (_median(ph) if ph else None), (_median(ng) if ng else None)
        for r in sc["rows"]:
            v = _median(r)
            if v is None:
                continue
            if sc["metric"] == "rps":  # higher is better: pronghorn ÷ row, row ÷ nginx
                r["pronghorn_over_this"] = p / v if p and v else None
                r["this_over_nginx"] = v / n if n else None
            else:  # lower is better: row ÷ pronghorn, row ÷ nginx
                r["this_over_pronghorn"] = v / p if p else None
                r["this_over_nginx"] = v / n if n else None


def paired_ratio(a_row, b_row):
    """(median over rounds of a ÷ b, rounds): each round's valid figures against each other. The
    machine's speed drifts between rounds (other guests on the host); within a round, servers
    run minutes apart at most, so a ratio per round is steadier than a ratio of medians."""
    if not a_row or not b_row:
        return None, 0
    av = {x["round"]: x["value"] for x in a_row["samples"] if x["valid"]}
    bv = {x["round"]: x["value"] for x in b_row["samples"] if x["valid"]}
    ratios = [av[r] / bv[r] for r in av if bv.get(r)]
    return (statistics.median(ratios) if ratios else None), len(ratios)


def _suffix(sc):
    return "-wsgi" if list(sc["kinds"]) == ["wsgi"] else ""


def _targets(out):
    by_key = {sc["key"]: sc for sc in out["scenarios"]}
    res = []
    for label, key, peer, kind, limit in TARGETS:
        sc = by_key.get(key)
        t = {"target": label, "scenario": key, "measured": None, "met": None, "note": ""}
        res.append(t)
        if not sc:
            t["note"] = "scenario not run"
            continue
        suffix = _suffix(sc)  # a WSGI scenario's rows are the servers' WSGI modes
        ph = next((r for r in sc["rows"] if r["id"] == "pronghorn" + suffix), None)
        if not ph or ph["status"] != "ok":
            t["note"] = "no valid pronghorn run"
            continue
        if kind == "ratio":
            other = next((r for r in sc["rows"] if r["id"] == peer + suffix), None)
            if not other or other["status"] != "ok":
                t["note"] = f"no valid {peer} run"
                continue
            ratio, pairs = paired_ratio(ph, other)
            how = f"paired in {pairs} round(s)"
            if ratio is None:
                ratio, how = _median(ph) / _median(other), "ratio of medians"
            t["measured"] = round(ratio, 2)
            t["text"] = (
                f"{ratio:.2f}× ({how}; medians {_median(ph):,.0f} vs {_median(other):,.0f} "
                f"{sc['unit']})"
            )
            t["met"] = ratio >= limit
            busy = max(_median(ph, "client_cpu") or 0, _median(other, "client_cpu") or 0)
            if busy >= CLIENT_BOUND:
                t["note"] = f"the load generator used {busy:.2f} of its core: maybe its ceiling"
                a, b = _median(ph, "per_server_core"), _median(other, "per_server_core")
                if a and b:
                    t["note"] += f"; per server core {a / b:.2f}× ({a:,.0f} vs {b:,.0f})"
        elif kind == "best":
            _best_target(t, sc, ph, peer, limit)
        elif kind == "p99":
            p99 = _median(ph, "p99_ms")
            t["measured"] = round(p99, 3)
            bad = sum(1 for x in ph["samples"] if x.get("errors") or x.get("non2xx"))
            clean = bad == 0
            p999 = _median(ph, "p999_ms")
            t["text"] = f"p99 {p99:.2f} ms (p99.9 {_ms(p999)} ms), " + (
                "no errors" if clean else f"{bad} run(s) with errors"
            )
            t["met"] = p99 < limit and clean
            if ph.get("tool", "").startswith("wrk"):
                t["note"] = "wrk paced, not oha: indicative only"
        elif kind == "rss":
            kib = _median(ph)
            t["measured"] = round(kib, 2)
            t["text"] = f"{kib:.2f} KiB"
            t["met"] = kib <= limit
    return res


def _best_target(t, sc, ph, peers, limit):
    """pronghorn against the best of several peers, paired: in each round, pronghorn's figure ÷
    the highest of the peers' that round, then the median over rounds. Rounds count where
    pronghorn and every peer with a valid run at all have one; a peer with none is named and
    left out. Each peer's own paired ratio goes into the note."""
    rows = {r["id"]: r for r in sc["rows"]}
    ok = [p for p in peers if rows.get(p) and rows[p]["status"] == "ok"]
    missing = [rows[p]["server"] if p in rows else p for p in peers if p not in ok]
    if not ok:
        t["note"] = "no valid run of any peer"
        return
    pv = {x["round"]: x["value"] for x in ph["samples"] if x["valid"]}
    per = {p: {x["round"]: x["value"] for x in rows[p]["samples"] if x["valid"]} for p in ok}
    rounds = [r for r in pv if all(r in per[p] for p in ok)]
    best = max(ok, key=lambda p: _median(rows[p]))  # by median: the one the text names
    if rounds:
        ratios = [pv[r] / max(per[p][r] for p in ok) for r in rounds]
        ratio, how = statistics.median(ratios), f"paired in {len(rounds)} round(s)"
    else:
        ratio, how = _median(ph) / _median(rows[best]), "ratio of medians"
    t["measured"] = round(ratio, 2)
    t["text"] = (
        f"{ratio:.2f}× the best, {rows[best]['server']} ({how}; medians {_median(ph):,.0f} vs "
        f"{_median(rows[best]):,.0f} {sc['unit']})"
    )
    t["met"] = ratio >= limit
    each = []
    for p in ok:
        r, n = paired_ratio(ph, rows[p])
        each.append(f"{rows[p]['server']} {r:.2f}×" if r else f"{rows[p]['server']} —")
    notes = ["paired ÷ each: " + ", ".join(each)]
    a, b = _median(ph, "per_server_core"), _median(rows[best], "per_server_core")
    if a and b:
        notes.append(f"per server core {a / b:.2f}× {rows[best]['server']} ({a:,.0f} vs {b:,.0f})")
    if missing:
        notes.append("no valid run, left out: " + ", ".join(missing))
    busy = max([_median(ph, "client_cpu") or 0] + [_median(rows[p], "client_cpu") or 0 for p in ok])
    if busy >= CLIENT_BOUND:
        notes.append(f"the load generator used {busy:.2f} of its core: maybe its ceiling")
    t["note"] = "; ".join(notes)


# -- Markdown -----------------------------------------------------------------------------------


def _fmt(v, metric):
    if v is None:
        return "—"
    if metric == "rps":
        return f"{v:,.0f}"
    return f"{v:.2f}"


def _x(v):
    return "—" if v is None else f"{v:.2f}×"


def _cores(r):
    server, client = _median(r, "server_cpu"), _median(r, "client_cpu")
    return "—" if server is None or client is None else f"{server:.2f} / {client:.2f}"


def _spread(st, metric):
    if not st:
        return ""
    return f"{_fmt(st['min'], metric)}–{_fmt(st['max'], metric)}"


def markdown(results, charts_rel=()):
    meta = results["meta"]
    m = meta["machine"]
    s = meta["settings"]
    v = meta["versions"]
    lines = [
        f"# pronghorn benchmark{' (smoke)' if meta['smoke'] else ''}: {meta['date'][:10]}, "
        f"commit {meta['commit']}{' + local changes' if meta['pronghorn_source_dirty'] else ''}",
        "",
    ]
    if meta.get("pronghorn_source_changed_during_run"):
        lines += [
            "**Warning: pronghorn's source changed during this run (an edit or a commit), so its "
            "rows mix builds.** Measure a fixed build with `run.py --pronghorn EXE`.",
            "",
        ]
    lines += [
        f"{m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, {m['os']}, "
        f"Linux {m['kernel']}, Python {m['python']}. Every server runs one worker pinned to "
        f"CPU {s['server_cpu']} (all its threads), the load generator runs on CPU "
        f"{s['client_cpu']}. {s['rounds']} round(s) in alternating server order; each "
        f"measurement follows a {s['warmup']} s warm-up and lasts {s['seconds']} s "
        f"(fixed rate: {s['rate_seconds']} s). Figures are the median of the valid rounds with "
        "the min–max spread; a run with errors or non-2xx answers is flagged and not counted, "
        "and so is one during which other processes used more than 5% of a core or the "
        "hypervisor stole more than 10% (it is repeated). "
        f"Whole run: {meta['elapsed_seconds'] / 60:.1f} min.",
        "",
        "Versions: "
        + ", ".join(f"{k} {x}" for k, x in v.items())
        + "; tools: "
        + ", ".join(f"{k} {x}" for k, x in meta["tools"].items())
        + ".",
        "",
        "## Targets",
        "",
    ]
    lines += _targets_table(results)
    charts = {p.stem: p for p in charts_rel}
    for sc in results["scenarios"]:
        tool = sc["tool"]
        paced = [r["tool"] for r in sc["rows"] if r.get("tool", "").startswith("wrk paced")]
        if paced:
            tool = f"{paced[0]}: oha not installed, closed loop, latency not corrected"
        lines += ["", f"## {sc['number']} · {sc['title']}", "", f"Load: {tool}.", ""]
        lines += _table(sc)
        pathsend = [f"{r['server']} {'yes' if r['pathsend'] else 'no'}" for r in sc["rows"]
                    if "pathsend" in r]  # fmt: skip
        if pathsend:
            lines += [
                "",
                "Scope advertised `http.response.pathsend` (FileResponse then hands the server "
                "the path; else it streams 64 KiB chunks): " + ", ".join(pathsend) + ".",
            ]
        tls = [f"{r['server']} {r['tls']}" for r in sc["rows"] if "tls" in r]
        if tls:
            lines += [
                "",
                "Negotiated with an OpenSSL client offering what the load generator offers: "
                + ", ".join(tls)
                + ".",
            ]
        if sc.get("reconnect"):
            lines += [
                "",
                "Cores: what the server's process group (over the warm-up and the measurement) "
                "and wrk used. A full handshake can cost wrk's OpenSSL as much as the "
                "server's, and wrk has one core: a row whose wrk is near 1.00 and whose server "
                "is not measures wrk's ceiling. Per server core: the figure ÷ the server's "
                "cores, what it would reach on a core of its own were wrk not the limit "
                "(roughly: a server that is not saturated wakes up more often per handshake).",
            ]
        if sc.get("message"):
            lines += [
                "",
                f"Each connection sends one binary message of {sc['message']:,} bytes (one "
                "frame), waits for its echo and checks its type, length and bytes, then sends "
                "the next; no compression is offered (permessage-deflate off). A round trip is "
                "one message each way. uvicorn runs `--ws websockets` (the legacy "
                "implementation, deprecated), uvicorn (wsproto) `--ws wsproto` and uvicorn "
                "(websockets-sansio) `--ws websockets-sansio` (what uvicorn's default, `--ws "
                "auto`, picks); hypercorn echoes through wsproto, granian through its own Rust "
                "implementation. No nginx row: it has no application to echo with. Cores: the "
                "server's process group over the warm-up and the measurement, and wsload's "
                "over its run; wsload near 1.00 means its one core may be the limit. Per "
                "server core: the figure ÷ the server's cores, i.e. its own CPU cost per round "
                "trip; with one connection (8b) the two sides take turns and neither fills its "
                "core, so the round-trip rate also carries wsload's share.",
            ]
            odd = _odd_closes(sc)
            if odd:
                lines += ["", "Closing handshakes other than 1000 (not counted as errors): " + odd]
        flags = []
        for r in sc["rows"]:
            flags += [f"- flagged, not counted: {r['server']} {f}" for f in r["flags"]
                      if "disturbed" not in f]  # fmt: skip
            n = sum(1 for x in r["samples"] if x.get("disturbed"))
            if n:
                flags.append(
                    f"- {r['server']}: {n} measurement(s) disturbed by other processes "
                    "or hypervisor steal, not counted (repeated when time allowed)"
                )
        if flags:
            lines += [""] + flags
        if sc["key"] in charts:
            lines += ["", f"![{sc['title']}]({charts[sc['key']].as_posix()})"]
    return "\n".join(lines) + "\n"


def _odd_closes(sc):
    """ "server: 3 no close frame (timeout) (round 2), ..." for wsload's closing handshakes at
    the end of each run that did not come back as a 1000 close frame."""
    out = []
    for r in sc["rows"]:
        for x in r["samples"]:
            closes = (x.get("raw") or {}).get("closes") or {}
            odd = [f"{n} {how}" for how, n in closes.items() if how != "close 1000"]
            if odd:
                out.append(f"{r['server']}: {', '.join(odd)} (round {x['round']})")
    return "; ".join(out) + ("." if out else "")


def _targets_table(results):
    lines = ["| target | measured | met |", "|---|---|---|"]
    for t in results["targets"]:
        met = {True: "yes", False: "**no**", None: "no data"}[t["met"]]
        text = t.get("text") or t["note"]
        if t.get("text") and t["note"]:
            text += f" ({t['note']})"
        lines.append(f"| {t['target']} | {text} | {met} |")
    return lines


def _table(sc):
    metric = sc["metric"]
    ceiling = "nginx" + (f" (scenario {sc['ceiling']})" if sc["ceiling"] else "")
    transfer = sc.get("transfer")
    per_core = sc.get("reconnect")
    ws = sc.get("message")  # WebSocket echo: round-trip latency and both sides' cores
    # no nginx row to compare with (2c's file, 6d's sleep): no column
    has_ceiling = "nginx" in sc["kinds"] or sc["ceiling"]
    if metric == "rps":
        head = (
            f"| server | {sc['unit']} | min–max | "
            + (f"MiB/s ({'echoed' if ws else 'read by wrk'}) | " if transfer else "")
            + ("per server core | cores: server / wrk | " if per_core else "")
            + (
                "round trip p50 ms | p99 ms | per server core | cores: server / wsload | "
                if ws
                else ""
            )
            + "pronghorn ÷ this | "
            + (f"this ÷ {ceiling} | " if has_ceiling else "")
            + "valid runs |"
        )
    elif metric == "latency":
        head = (
            "| server | p50 ms | p99 ms | p99.9 ms | achieved req/s | p99 ÷ pronghorn's "
            "| p99 ÷ nginx's | valid runs |"
        )
    else:
        head = (
            "| server | KiB per idle conn | min–max | RSS before → with conns (MiB) "
            "| this ÷ pronghorn | this ÷ nginx | valid runs |"
        )
    out = [head, "|" + "---|" * (head.count("|") - 1)]
    ncols = head.count("|") - 1
    for r in sc["rows"]:
        name = f"**{r['server']}**" if r["id"].startswith("pronghorn") else r["server"]
        runs = f"{r['valid_runs']}/{r['runs']}"
        if r["status"] != "ok":
            status = r["status"] if not r["runs"] else f"{r['status']} ({runs})"
            out.append(f"| {name} | {status} |" + " |" * (ncols - 2))
            continue
        st = r["value"]
        if metric == "rps":
            cells = [
                _fmt(st["median"], metric),
                _spread(st, metric),
                *([_mib(_median(r, "transfer")) if r.get("transfer") else "—"] if transfer else []),
                *([_fmt(_median(r, "per_server_core"), metric), _cores(r)] if per_core else []),
                *(
                    [
                        _ms(_median(r, "p50_ms")),
                        _ms(_median(r, "p99_ms")),
                        _fmt(_median(r, "per_server_core"), metric),
                        _cores(r),
                    ]
                    if ws
                    else []
                ),
                _x(r.get("pronghorn_over_this")) if not r["id"].startswith("pronghorn") else "",
                *([_x(r.get("this_over_nginx"))] if has_ceiling else []),
                runs,
            ]
        elif metric == "latency":
            cells = [
                _fmt(_median(r, "p50_ms"), metric),
                f"{_fmt(st['median'], metric)} ({_spread(st, metric)})",
                _fmt(_median(r, "p999_ms"), metric),
                _fmt(_median(r, "rps"), "rps"),
                _x(r.get("this_over_pronghorn")) if r["id"] != "pronghorn" else "",
                _x(r.get("this_over_nginx")),
                runs,
            ]
        else:
            before, after = _median(r, "rss_before_kib"), _median(r, "rss_after_kib")
            cells = [
                _fmt(st["median"], metric),
                _spread(st, metric),
                f"{before / 1024:.1f} → {after / 1024:.1f}",
                _x(r.get("this_over_pronghorn")) if r["id"] != "pronghorn" else "",
                _x(r.get("this_over_nginx")),
                runs,
            ]
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


# -- charts -------------------------------------------------------------------------------------

COLORS = {"pronghorn": "#d95f02", "nginx": "#9e9e9e"}
OTHER = "#4c78a8"


def charts(results, outdir):
    """One PNG per scenario; [] when matplotlib is not installed (it is in bench/.venv)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    outdir.mkdir(parents=True, exist_ok=True)
    meta = results["meta"]
    made = []
    for sc in results["scenarios"]:
        rows = sc["rows"]
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(8, 0.55 * len(rows) + 1.6), dpi=110)
        names = [r["server"] for r in rows]
        if sc["metric"] == "latency":  # a server that could not keep up says so
            names = [
                n if not r.get("rps") or r["rps"]["median"] >= 0.97 * sc["rate"]
                else f"{n}\n(only {r['rps']['median']:,.0f} req/s)"
                for n, r in zip(names, rows, strict=True)
            ]  # fmt: skip
        ys = list(range(len(rows)))[::-1]
        colors = [COLORS.get(r["server"], OTHER) for r in rows]
        if sc["metric"] == "latency":
            _latency_bars(ax, rows, ys)
        else:
            _bars(ax, rows, ys, colors, sc["metric"])
        ax.set_yticks(ys, names)
        ax.set_title(f"{sc['number']} · {sc['title']}", fontsize=11, loc="left")
        per_s = "requests/s" if sc["unit"] == "req/s" else sc["unit"]
        ax.set_xlabel(
            {"rps": f"{per_s} (median, bar = min–max)", "latency": "latency, ms (log scale)"}.get(
                sc["metric"], "KiB of RSS per idle connection (lower is better)"
            )
        )
        ax.spines[["top", "right"]].set_visible(False)
        fig.text(
            0.99, 0.01,
            f"{meta['date'][:10]} · {meta['commit']} · 1 core per server · {sc['tool']}",
            ha="right", va="bottom", fontsize=7, color="#666",
        )  # fmt: skip
        fig.tight_layout()
        path = outdir / f"{sc['key']}.png"
        fig.savefig(path)
        plt.close(fig)
        made.append(path)
    return made


def _bars(ax, rows, ys, colors, metric):
    top = max([r["value"]["max"] for r in rows if r["status"] == "ok"] or [1])
    for y, r, c in zip(ys, rows, colors, strict=True):
        if r["status"] != "ok":
            ax.text(top * 0.01, y, r["status"], va="center", fontsize=9, color="#666")
            continue
        st = r["value"]
        err = [[st["median"] - st["min"]], [st["max"] - st["median"]]]
        ax.barh(y, st["median"], color=c, xerr=err, capsize=3, height=0.6)
        label = f"{st['median']:,.0f}" if metric == "rps" else f"{st['median']:.2f}"
        ax.text(st["max"] + top * 0.01, y, label, va="center", fontsize=9)
    ax.set_xlim(0, top * 1.18)


def _latency_bars(ax, rows, ys):
    keys = [
        ("p50_ms", "p50", "#a6cee3"),
        ("p99_ms", "p99", "#1f78b4"),
        ("p999_ms", "p99.9", "#08306b"),
    ]
    h = 0.26
    lo = min([_median(r, "p50_ms") or 1 for r in rows if r["status"] == "ok"] or [0.1])
    labelled = False
    for y, r in zip(ys, rows, strict=True):
        if r["status"] != "ok":
            ax.text(lo, y, r["status"], va="center", fontsize=9, color="#666")
            continue
        for i, (k, name, color) in enumerate(keys):
            v = _median(r, k)
            if v is None:
                continue
            edge = COLORS["pronghorn"] if r["id"] == "pronghorn" else color
            ax.barh(y + (1 - i) * h, v, height=h, color=color, edgecolor=edge, linewidth=1.5,
                    label=None if labelled or r["id"] == "pronghorn" else name)  # fmt: skip
            ax.text(v * 1.05, y + (1 - i) * h, f"{v:.2f}", va="center", fontsize=7)
        labelled = labelled or r["id"] != "pronghorn"
    ax.set_xscale("log")
    ax.legend(loc="lower right", fontsize=8)


def exit_status(results, smoke):
    """Smoke: fail when a scenario that ran on pronghorn has no valid run (harness or server
    broken). Prints the closing count line either way."""
    passed = failed = skipped = 0
    for sc in results["scenarios"]:
        for r in sc["rows"]:
            if not r["id"].startswith("pronghorn"):
                continue
            if not r["runs"]:
                skipped += 1
            elif r["valid_runs"]:
                passed += 1
            else:
                failed += 1
    print(f"bench: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if smoke and failed else 0


# -- the README's Performance figures ------------------------------------------------------------

README_BEGIN = "<!-- bench:begin (written by bench/run.py from the latest full run) -->"
README_END = "<!-- bench:end -->"


def readme_section(results, charts=(), history_chart=None, charts_dir="bench/results/charts"):
    """The figures of the README's Performance section: one table of medians (scenarios ×
    servers), the targets, the history chart and the scenario charts."""
    meta = results["meta"]
    labels = []  # one column per server label: a WSGI row's pronghorn is pronghorn's column
    for sc in results["scenarios"]:
        for r in sc["rows"]:
            if r["server"] not in labels:
                labels.append(r["server"])
    s = meta["settings"]
    lines = [
        README_BEGIN,
        "",
        f"Run of {meta['date'][:10]}, commit {meta['commit']}"
        + (" + local changes" if meta.get("pronghorn_source_dirty") else "")
        + f", {s['rounds']} rounds of {s['seconds']} s (fixed rate {s['rate_seconds']} s), "
        f"{meta['elapsed_seconds'] / 60:.0f} min; every figure and its spread in "
        "[bench/results/latest.md](bench/results/latest.md).",
        "",
        "| scenario (median) | " + " | ".join(labels) + " |",
        "|---|" + "---|" * len(labels),
    ]
    for sc in results["scenarios"]:
        rows = {r["server"]: r for r in sc["rows"]}
        metric = sc["metric"]
        unit = {"rps": sc["unit"], "latency": "p99 ms", "rss": "KiB/conn"}[metric]
        values = {k: _median(r) for k, r in rows.items() if r["status"] == "ok"}
        apps = {k: v for k, v in values.items() if k != "nginx"}
        best = None
        if apps:
            pick = max if metric == "rps" else min
            best = pick(apps, key=apps.get)
        cells = []
        for label in labels:
            r = rows.get(label)
            if r is None:
                cells.append("")
            elif r["status"] != "ok":
                cells.append("—" if r["runs"] else r["status"])
            else:
                v = _fmt(values[label], metric)
                cells.append(f"**{v}**" if label == best else v)
        lines.append(f"| {sc['number']} · {sc['title']} ({unit}) | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Bold: the best application server in the row. —: no valid run (see latest.md for why).",
        "",
    ]
    lines += _targets_table(results)
    if history_chart:
        lines += ["", f"![headline ratios across commits]({charts_dir}/{history_chart.name})"]
    made = {Path(c).stem for c in charts}
    lines += [""]
    for sc in results["scenarios"]:
        if sc["key"] in made:
            lines.append(f"![{sc['number']} · {sc['title']}]({charts_dir}/{sc['key']}.png)")
    lines += ["", README_END]
    return "\n".join(lines)


def update_readme(path, section):
    """Replaces what lies between the markers; False if the README has no markers."""
    text = path.read_text()
    a, b = text.find(README_BEGIN), text.find(README_END)
    if a < 0 or b < a:
        return False
    path.write_text(text[:a] + section + text[b + len(README_END) :])
    return True
