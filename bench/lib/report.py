#!/usr/bin/env python3
# bench/lib/report.py: turn bench/run.sh's raw measurements into one markdown table.
#
# usage: report.py RUNS_TSV MEM_TSV
#   RUNS_TSV rows: section target label round tool rps lat_a_ms lat_b_ms errors note
#     tool = wrk (lat_a = p50, lat_b = p99), h2load (lat_a = mean, lat_b = max: h2load prints
#     no percentiles), skip / todo (no numbers; note says why), fail (the load tool failed),
#     info (a measured fact that is not a load run: rps, lat_a, lat_b optional, note says what).
#     A note on a wrk/h2load row is shown in the table's notes (once per target).
#   MEM_TSV rows: label transport idle_kib loaded_kib n_ok n_failed note
# Per-target figures are medians over rounds; a ratio is computed per round (both runs in the
# same round, so drift between rounds cancels) and the median of those per-round ratios shown.
import statistics
import sys
from collections import OrderedDict, defaultdict

# (jwtgate target, peer target): shown in the peer's row as "jwtgate ÷ this"
RATIOS = {
    "plain": [("jg-http", "direct"), ("jg-http", "nginx-http"), ("jg-http", "haproxy-http")],
    "tls": [("jg-tls", "direct"), ("jg-tls", "nginx-tls"), ("jg-tls", "haproxy-tls")],
    "h2": [("jg-h2", "direct-h1"), ("jg-h2", "nginx-h2"), ("jg-h2", "haproxy-h2")],
    "auth": [("jg-rs256-tls", "haproxy-rs256-tls"), ("jg-hs256-http", "haproxy-hs256-http")],
    "free": [("jg-free-tls", "nginx-tls"), ("jg-free-h2", "nginx-h2"), ("jg-http", "floor-http")],
}
# (target, base target of the same section): shown in the target's row as "this ÷ base"
REL = {
    "tokens": [("jg-tok-es-10k", "jg-tok-es-1"), ("jg-tok-es-1m", "jg-tok-es-1"),
               ("jg-tok-rs-10k", "jg-tok-rs-1")],
    "revocation": [("jg-rev-redis", "jg-rev-memory")],
    "refresh": [("jg-refresh-mix", "jg-refresh-none")],
    "features": [("jg-feat-global", "jg-feat-base"), ("jg-feat-all", "jg-feat-base")],
    "login": [("jg-login-on", "jg-login-off")],
    "rules": [("jg-rules-allow", "jg-rules-none")],
    "stores": [("jg-store-sentinel", "jg-store-single"), ("jg-store-cluster", "jg-store-single")],
}
# (a, b) of one section, printed under the table as "a ÷ b": the free section's floor
# (examples/hyper_floor) against nginx, and jwtgate against the floor
PAIRS = {
    "free": [("floor-tls", "nginx-tls"), ("floor-h2", "nginx-h2"),
             ("floor-hdr-tls", "nginx-tls"), ("floor-hdr-h2", "nginx-h2"),
             ("jg-free-tls", "floor-tls"), ("jg-free-h2", "floor-h2"),
             ("jg-free-tls", "floor-hdr-tls"), ("jg-free-h2", "floor-hdr-h2"),
             ("jg-http", "floor-http")],
}
# (authenticated target, unauthenticated target in the same process): auth cost = 1 - a/b
COSTS = {
    "auth": [("jg-rs256-tls", "jg-open-tls"), ("jg-es256-tls", "jg-open-tls"),
             ("jg-hs256-http", "jg-open-http")],
}


def fnum(s):
    try:
        return float(s)
    except (TypeError, ValueError):
        return None


def fmt_rps(v):
    return "—" if v is None else f"{v:,.0f}"


def fmt_ms(v):
    if v is None:
        return "—"
    return f"{v:.3f}" if v < 1 else f"{v:.2f}"


def per_round_ratios(rps, a, b):
    """rps[target][round] -> list of a/b for rounds where both have a value."""
    out = []
    for rnd, va in rps.get(a, {}).items():
        vb = rps.get(b, {}).get(rnd)
        if va is not None and vb:
            out.append(va / vb)
    return out


def fmt_ratio(vals):
    if not vals:
        return "—"
    med = statistics.median(vals)
    if len(vals) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} ({min(vals):.2f}–{max(vals):.2f})"


def main():
    runs_path, mem_path = sys.argv[1], sys.argv[2]
    targets = OrderedDict()  # (section, target) -> info
    rps = defaultdict(dict)  # target -> {round: rps}
    for line in open(runs_path, encoding="utf-8"):
        f = line.rstrip("\n").split("\t")
        if len(f) < 10 or f[0] == "section":
            continue
        section, target, label, rnd, tool, r, la, lb, errs, note = f[:10]
        t = targets.setdefault((section, target), {
            "label": label, "tool": tool, "rps": [], "a": [], "b": [],
            "errors": 0, "err_rounds": [], "fails": 0, "notes": [],
        })
        if tool in ("skip", "todo", "info"):
            t["tool"] = tool
            if tool == "info":
                t["info"] = (fnum(r), fnum(la), fnum(lb))
            if note and note not in t["notes"]:
                t["notes"].append(note)
            continue
        if tool == "fail":
            t["fails"] += 1
            if note and note not in t["notes"]:
                t["notes"].append(note)
            continue
        t["tool"] = tool
        if note and note not in t["notes"]:
            t["notes"].append(note)
        v = fnum(r)
        if v is not None:
            t["rps"].append(v)
            rps[target][rnd] = v
        for key, val in (("a", la), ("b", lb)):
            x = fnum(val)
            if x is not None:
                t[key].append(x)
        e = int(fnum(errs) or 0)
        if e:
            t["errors"] += e
            t["err_rounds"].append(rnd)

    ratio_for = {}  # (section, peer) -> (jwtgate target, vals)
    for section, pairs in RATIOS.items():
        for jg, peer in pairs:
            vals = per_round_ratios(rps, jg, peer)
            if vals:
                ratio_for[(section, peer)] = (jg, vals)
    rel_for = {}  # (section, target) -> (base target, vals)
    for section, pairs in REL.items():
        for target, base in pairs:
            vals = per_round_ratios(rps, target, base)
            if vals:
                rel_for[(section, target)] = (base, vals)
    cost_for = defaultdict(list)  # (section, authed) -> notes
    for section, pairs in COSTS.items():
        for authed, open_ in pairs:
            vals = [1 - x for x in per_round_ratios(rps, authed, open_)]
            if vals:
                open_label = targets.get((section, open_), {}).get("label", open_)
                cost_for[(section, authed)].append(
                    f"auth cost 1 − this ÷ {open_label}: {fmt_ratio(vals)}")

    h2_seen = False
    out = ["| section | target | req/s | p50 ms | p99 ms | jwtgate ÷ this | notes |",
           "|---|---|---:|---:|---:|---:|---|"]
    for (section, target), t in targets.items():
        notes = list(t["notes"])
        if t["tool"] == "todo":
            out.append(f"| {section} | {t['label']} | TODO | — | — | — | {'; '.join(notes)} |")
            continue
        if t["tool"] == "skip":
            out.append(f"| {section} | {t['label']} | skipped | — | — | — | {'; '.join(notes)} |")
            continue
        if t["tool"] == "info":
            r, la, lb = t.get("info", (None, None, None))
            out.append(f"| {section} | {t['label']} | {fmt_rps(r)} | {fmt_ms(la)} | {fmt_ms(lb)} | — | "
                       f"{'; '.join(notes)} |")
            continue
        med = statistics.median(t["rps"]) if t["rps"] else None
        a = statistics.median(t["a"]) if t["a"] else None
        b = statistics.median(t["b"]) if t["b"] else None
        if t["tool"] == "h2load":
            h2_seen = True
            p50 = "—" if a is None else f"mean {fmt_ms(a)}¹"
            p99 = "—" if b is None else f"max {fmt_ms(b)}¹"
        else:
            p50, p99 = fmt_ms(a), fmt_ms(b)
        ratio = "—"
        if (section, target) in ratio_for:
            jg, vals = ratio_for[(section, target)]
            ratio = fmt_ratio(vals)
            jg_label = targets.get((section, jg), {}).get("label", jg)
            if section == "auth":
                notes.append(f"ratio = {jg_label} ÷ this")
        elif (section, target) in rel_for:
            base, vals = rel_for[(section, target)]
            ratio = fmt_ratio(vals)
            base_label = targets.get((section, base), {}).get("label", base)
            notes.append(f"ratio = this ÷ {base_label}")
        notes.extend(cost_for.get((section, target), []))
        if t["fails"]:
            notes.append(f"WARNING: load tool failed in {t['fails']} run(s)")
        if t["errors"]:
            notes.append(f"WARNING: {t['errors']} non-2xx/socket errors (round(s) {','.join(t['err_rounds'])})")
        n = len(t["rps"])
        if n:
            notes.insert(0, f"{n} round{'s' if n != 1 else ''}")
        out.append(f"| {section} | {t['label']} | {fmt_rps(med)} | {p50} | {p99} | {ratio} | {'; '.join(notes)} |")

    try:
        mem_lines = open(mem_path, encoding="utf-8").read().splitlines()
    except FileNotFoundError:
        mem_lines = []
    for line in mem_lines:
        f = line.split("\t")
        if len(f) < 7 or f[0] == "label":
            continue
        label, transport, idle, loaded, n_ok, n_failed, note = f[:7]
        idle_k, loaded_k = fnum(idle), fnum(loaded)
        n = int(fnum(n_ok) or 0)
        parts = []
        if idle_k is not None and loaded_k is not None:
            per = (loaded_k - idle_k) / n if n else None
            parts.append(f"RSS {idle_k / 1024:.1f} MiB idle → {loaded_k / 1024:.1f} MiB with {n} idle keep-alive conns"
                         + (f" ({per:.1f} KiB/conn)" if per is not None else ""))
        if int(fnum(n_failed) or 0):
            parts.append(f"WARNING: {n_failed} connections failed")
        if note:
            parts.append(note)
        out.append(f"| mem | {label} ({transport}) | — | — | — | — | {'; '.join(parts)} |")

    print("\n".join(out))
    print()
    pair_lines = []
    for section, pairs in PAIRS.items():
        for a, b in pairs:
            vals = per_round_ratios(rps, a, b)
            if vals:
                la = targets.get((section, a), {}).get("label", a)
                lb = targets.get((section, b), {}).get("label", b)
                pair_lines.append(f"- {section}: {la} ÷ {lb}: {fmt_ratio(vals)}")
    if pair_lines:
        print("Same-round ratios (median (min–max) over rounds):")
        print()
        print("\n".join(pair_lines))
        print()
    print("Ratios: per-round ratio of req/s (both measured in the same round), median over rounds, "
          "(min–max) over rounds in brackets; > 1 means jwtgate served more. Rows whose notes say "
          "\"ratio = this ÷ X\" compare two jwtgate configurations instead (< 1: this one is slower).")
    if h2_seen:
        print("¹ h2load prints no latency percentiles: these are the mean and max of its "
              "\"time for request\" (medians over rounds).")


if __name__ == "__main__":
    main()
