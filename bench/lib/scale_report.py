#!/usr/bin/env python3
"""bench/lib/scale_report.py: bench/scale.sh's measurements -> one markdown table (stdout)
and, when a folder is given, one PNG per curve (matplotlib).

usage: scale_report.py POINTS_TSV [PLOT_DIR]
POINTS_TSV rows: curve, x, variant, round, req/s (or "fail"), p99 ms, gateway RSS KiB,
errors, extra (k=v;k=v: start_ms, idle_rss_kib, held_rss_kib, held, failed, fill_ms,
redis_rss_kib).
"""
import os
import statistics
import sys
from collections import OrderedDict

CURVE_TITLE = {
    "routes": "routes",
    "tokens": "distinct tokens",
    "revoked": "revoked jtis in Redis",
    "conns": "idle keep-alive connections",
    "cold": "RS256 first sighting",
}


def fmt_int(v):
    return f"{v:,.0f}"


def short(x):
    x = int(x)
    for div, suffix in ((1_000_000, "M"), (1_000, "k")):
        if x >= div and x % div == 0:
            return f"{x // div}{suffix}"
    return str(x)


def mib(kib):
    return f"{kib / 1024:.1f}"


def load(path):
    groups = OrderedDict()  # (curve, variant) -> OrderedDict(x -> [rows])
    with open(path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 9:
                continue
            curve, x, variant, rnd, rps, p99, rss, errs, extra = parts[:9]
            kv = dict(p.split("=", 1) for p in extra.split(";") if "=" in p)
            row = {
                "round": int(rnd),
                "rps": None if rps in ("fail", "", "-") else float(rps),
                "p99": float(p99) if p99 not in ("", "-") else None,
                "rss": int(rss) if rss else None,
                "errs": int(errs or 0),
                "kv": kv,
            }
            groups.setdefault((curve, variant), OrderedDict()).setdefault(int(x), []).append(row)
    # within a curve, the cold-pass lines after the others (the order of the curves is kept)
    order = {c: i for i, c in enumerate(OrderedDict.fromkeys(c for c, _ in groups))}
    keys = sorted(groups, key=lambda k: (order[k[0]], "cold" in k[1] and k[0] != "cold"))
    return OrderedDict((k, groups[k]) for k in keys)


def med(vals):
    vals = [v for v in vals if v is not None]
    return statistics.median(vals) if vals else None


def summary(rows):
    rps = [r["rps"] for r in rows if r["rps"] is not None]
    out = {
        "rps": med(rps),
        "lo": min(rps) if rps else None,
        "hi": max(rps) if rps else None,
        "p99": med([r["p99"] for r in rows]),
        "rss": max((r["rss"] for r in rows if r["rss"] is not None), default=None),
        "errs": sum(r["errs"] for r in rows),
        "fails": sum(1 for r in rows if r["rps"] is None),
        "n": len(rps),
    }
    kv = rows[0]["kv"]
    for k in ("start_ms", "idle_rss_kib", "held_rss_kib", "held", "failed", "fill_ms"):
        if k in kv:
            out[k] = float(kv[k])
    redis = [float(r["kv"]["redis_rss_kib"]) for r in rows if "redis_rss_kib" in r["kv"]]
    if redis:
        out["redis_rss_kib"] = max(redis)
    return out


def notes(curve, s):
    n = []
    if "start_ms" in s:
        n.append(f"ready in {s['start_ms']:.0f} ms")
    if "idle_rss_kib" in s and curve == "routes":
        n.append(f"idle RSS {mib(s['idle_rss_kib'])} MiB")
    if "held_rss_kib" in s:
        held = s.get("held", 0)
        per = (s["held_rss_kib"] - s["idle_rss_kib"]) / held if held else 0
        n.append(f"RSS {mib(s['idle_rss_kib'])} MiB idle → {mib(s['held_rss_kib'])} MiB with "
                 f"{fmt_int(held)} held ({per:.1f} KiB/conn)")
        if s.get("failed"):
            n.append(f"{s['failed']:.0f} failed to open")
    if "fill_ms" in s and s["fill_ms"] > 0:
        n.append(f"filled in {s['fill_ms'] / 1000:.1f} s")
    if "redis_rss_kib" in s:
        n.append(f"Redis RSS {mib(s['redis_rss_kib'])} MiB")
    if s["errs"]:
        n.append(f"{s['errs']} errors")
    if s["fails"]:
        n.append(f"{s['fails']} failed runs")
    return "; ".join(n)


def table(groups):
    print("| curve | point | variant | req/s (median, min–max) | ÷ first point | p99 ms | gateway RSS MiB | notes |")
    print("|---|---|---|---|---|---|---|---|")
    verdicts = []
    for (curve, variant), points in groups.items():
        first = None
        ratios = []
        for x, rows in points.items():
            s = summary(rows)
            if s["rps"] is None:
                print(f"| {curve} | {fmt_int(x)} | {variant} | failed | | | | {notes(curve, s)} |")
                continue
            if first is None:
                first = s["rps"]
            ratio = s["rps"] / first
            ratios.append((x, ratio))
            spread = f" ({fmt_int(s['lo'])}–{fmt_int(s['hi'])})" if s["n"] > 1 else ""
            p99 = f"{s['p99']:.2f}" if s["p99"] is not None else "—"
            rss = mib(s["rss"]) if s["rss"] else "—"
            shown = "—" if curve == "cold" else f"{ratio:.2f}"
            print(f"| {curve} | {fmt_int(x)} | {variant} | {fmt_int(s['rps'])}{spread} | {shown} | {p99} | {rss} | {notes(curve, s)} |")
        if curve != "cold" and len(ratios) > 1:
            worst = min(ratios, key=lambda t: t[1])
            last = ratios[-1]
            ok = all(r >= 0.90 for _, r in ratios)
            verdicts.append(
                f"- **{CURVE_TITLE.get(curve, curve)}**, {variant}: {short(ratios[0][0])} → {short(last[0])}: "
                f"last ÷ first {last[1]:.2f}, lowest {worst[1]:.2f} (at {short(worst[0])}): "
                + ("**within 10%**" if ok else "**not within 10%**"))
    if verdicts:
        print()
        print("Flatness (req/s of each point ÷ the first point of its line, medians over rounds):")
        print()
        print("\n".join(verdicts))
    cold = [(v, pts) for (c, v), pts in groups.items() if c == "cold"]
    if cold:
        by_round = {}
        for v, pts in cold:
            for rows in pts.values():
                for r in rows:
                    if r["rps"] is not None:
                        by_round.setdefault(r["round"], {})[v] = r["rps"]
        jg = [k for k in (v for v, _ in cold) if "first sighting" in k]
        ha = [k for k in (v for v, _ in cold) if "HAProxy" in k]
        if jg and ha:
            rs = [d[jg[0]] / d[ha[0]] for d in by_round.values() if jg[0] in d and ha[0] in d]
            if rs:
                print()
                print(f"Cold start: jwtgate first sighting ÷ HAProxy jwt_verify, per round: median {statistics.median(rs):.2f} "
                      f"({min(rs):.2f}–{max(rs):.2f}), {len(rs)} round(s).")
    conns = [(v, pts) for (c, v), pts in groups.items() if c == "conns"]
    if conns:
        print()
        print("RSS per idle connection, marginal (RSS with N held, between consecutive points):")
        print()
        for v, pts in conns:
            xs = sorted(pts)
            parts = []
            for a, b in zip(xs, xs[1:]):
                sa, sb = summary(pts[a]), summary(pts[b])
                if "held_rss_kib" in sa and "held_rss_kib" in sb and sb.get("held", 0) > sa.get("held", 0):
                    parts.append(f"{short(a)}→{short(b)}: {(sb['held_rss_kib'] - sa['held_rss_kib']) / (sb['held'] - sa['held']):.1f} KiB")
            if parts:
                print(f"- {v}: " + ", ".join(parts))


def plots(groups, folder):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(folder, exist_ok=True)
    curves = OrderedDict()
    for (curve, variant), points in groups.items():
        curves.setdefault(curve, []).append((variant, points))
    written = []
    for curve, lines in curves.items():
        fig, ax = plt.subplots(figsize=(7.5, 4.2), dpi=90)
        if curve == "cold":
            labels, vals, los, his = [], [], [], []
            for variant, points in lines:
                s = summary([r for rows in points.values() for r in rows])
                labels.append(variant.replace(" (", "\n("))
                vals.append(s["rps"] or 0)
                los.append((s["rps"] or 0) - (s["lo"] or 0))
                his.append((s["hi"] or 0) - (s["rps"] or 0))
            ax.bar(range(len(vals)), vals, yerr=[los, his], capsize=4, color=["#4c72b0", "#55a868", "#c44e52"][: len(vals)])
            ax.set_xticks(range(len(vals)))
            ax.set_xticklabels(labels, fontsize=7)
            ax.set_ylabel("req/s (median, min–max)")
            ax.set_title(f"jwtgate scale: {CURVE_TITLE['cold']} ({fmt_int(next(iter(lines[0][1])))} distinct RS256 tokens, each once)", fontsize=9)
        else:
            xs = sorted({x for _, pts in lines for x in pts})
            pos = {x: i for i, x in enumerate(xs)}
            ax2 = ax.twinx()
            colors = ["#4c72b0", "#c44e52", "#55a868", "#8172b2"]
            for i, (variant, points) in enumerate(lines):
                c = colors[i % len(colors)]
                px, py, lo, hi, rss = [], [], [], [], []
                for x, rows in points.items():
                    s = summary(rows)
                    if s["rps"] is None:
                        continue
                    px.append(pos[x])
                    py.append(s["rps"])
                    lo.append(s["rps"] - s["lo"])
                    hi.append(s["hi"] - s["rps"])
                    rss.append((s["rss"] or 0) / 1024)
                style = ":" if "cold" in variant else "-"
                ax.errorbar(px, py, yerr=[lo, hi], fmt="o" + style, color=c, capsize=3, label=f"req/s: {variant}")
                if "cold" not in variant:
                    ax2.plot(px, rss, "s--", color=c, alpha=0.5, label=f"RSS: {variant}")
                if curve == "revoked" and i == 0:
                    redis = [summary(points[x]).get("redis_rss_kib", 0) / 1024 for x in points]
                    ax2.plot([pos[x] for x in points], redis, "^-.", color="#937860", alpha=0.7, label="Redis RSS")
            ax.set_xticks(range(len(xs)))
            ax.set_xticklabels([short(x) for x in xs])
            ax.set_xlabel(CURVE_TITLE.get(curve, curve))
            ax.set_ylabel("req/s (median, min–max)")
            ax2.set_ylabel("RSS MiB (dashed)")
            ax.set_ylim(bottom=0)
            ax2.set_ylim(bottom=0)
            h1, l1 = ax.get_legend_handles_labels()
            h2, l2 = ax2.get_legend_handles_labels()
            ax.legend(h1 + h2, l1 + l2, fontsize=6.5, loc="lower left")
            ax.set_title(f"jwtgate scale: {CURVE_TITLE.get(curve, curve)}", fontsize=10)
            ax.grid(alpha=0.3)
        fig.tight_layout()
        out = os.path.join(folder, f"scale-{curve}.png")
        fig.savefig(out, dpi=90)
        plt.close(fig)
        written.append(f"scale-{curve}.png ({os.path.getsize(out) // 1024} KB)")
    print()
    print(f"Plots in {folder}: " + ", ".join(written))


def main():
    groups = load(sys.argv[1])
    table(groups)
    if len(sys.argv) > 2 and sys.argv[2]:
        plots(groups, sys.argv[2])


if __name__ == "__main__":
    main()
