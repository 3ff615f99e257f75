"""Turns benches/peers/run.sh results into docs/benchmarks-peers.json and the
"tiermail vs Dovecot" table of docs/benchmarks.md (between the peers markers).

usage: report.py RESULTS.jsonl QUICK DOVECOT_VERSION POSTFIX_VERSION
"""
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

results_path, quick, dovecot_version, postfix_version = sys.argv[1:5]
rows = [json.loads(line) for line in open(results_path) if line.strip()]


def median(values):
    return statistics.median(values) if values else None


# metric name -> server -> [values]
table = {}
order = []


def add(metric, server, value, better):
    if metric not in table:
        table[metric] = {"better": better, "tiermail": [], "dovecot": []}
        order.append(metric)
    table[metric][server].append(value)


for r in rows:
    w, srv, res = r["workload"], r["server"], r["result"]
    if w.startswith("IMAP mix"):
        for cmd, v in res.items():
            add(f"IMAP {cmd} (ops/s, 16 clients)", srv, v["ops_per_s"], "higher")
            add(f"IMAP {cmd} (p99 ms)", srv, v["p99_ms"], "lower")
    elif w.startswith("idle"):
        n = res["connections"]
        add(f"{n} idle IMAP connections: server RSS (MiB)", srv, res["after"]["rss_kib"] / 1024, "lower")
        add(f"{n} idle IMAP connections: server PSS (MiB)", srv, res["after"]["pss_kib"] / 1024, "lower")
        per = (res["after"]["pss_kib"] - res["before"]["pss_kib"]) / n
        add("idle IMAP connection: PSS per connection (KiB)", srv, per, "lower")
    elif "mb_per_s" in res:
        add(w, srv, res["mb_per_s"], "higher")
    else:
        add(w, srv, res["msg_per_s"], "higher")
        if "p99_ms" in res:
            add(w.replace("(msg/s)", "(p99 ms)"), srv, res["p99_ms"], "lower")

out = []
summary = []
for metric in order:
    t = median(table[metric]["tiermail"])
    d = median(table[metric]["dovecot"])
    ratio = (t / d) if (t is not None and d) else None
    summary.append({"metric": metric, "better": table[metric]["better"],
                    "tiermail": t, "dovecot": d, "ratio_tiermail_over_dovecot": ratio})
    fmt = lambda x: "-" if x is None else (f"{x:,.0f}" if abs(x) >= 100 else f"{x:.2f}")
    out.append(f"| {metric} | {fmt(t)} | {fmt(d)} | {'-' if ratio is None else f'{ratio:.2f}x'} | {table[metric]['better']} |")

rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
meta = {
    "date": datetime.date.today().isoformat(),
    "machine": f"{os.cpu_count()} cores, {platform.machine()}, {platform.release()}",
    "rustc": rustc,
    "dovecot": dovecot_version,
    "postfix": postfix_version,
    "mode": "quick" if quick == "1" else "full",
    "command": "bash benches/peers/run.sh" + (" --quick" if quick == "1" else ""),
    "durability": "both fsync every write before acknowledging it (tiermail WAL group commit; Dovecot mail_fsync=always, mdbox)",
}
json.dump({"meta": meta, "results": summary, "raw": rows},
          open("docs/benchmarks-peers.json", "w"), indent=2)

md = [
    "<!-- peers:start -->",
    f"Run: `{meta['command']}` on {meta['date']}; {meta['machine']}; {rustc}; "
    f"Dovecot {dovecot_version}; Postfix {postfix_version} (smtp-source). "
    f"Durability: {meta['durability']}. Values are medians of the rounds; the ratio is "
    "tiermail / Dovecot (for throughput above 1 means tiermail is faster, for latency and "
    "memory below 1 means tiermail is better). Raw numbers: `docs/benchmarks-peers.json`.",
    "",
    "| workload | tiermail | Dovecot | ratio | better |",
    "|---|---|---|---|---|",
    *out,
    "<!-- peers:end -->",
]
doc = open("docs/benchmarks.md").read()
if "<!-- peers:start -->" in doc:
    head, rest = doc.split("<!-- peers:start -->", 1)
    tail = rest.split("<!-- peers:end -->", 1)[1]
    doc = head + "\n".join(md) + tail
else:
    doc += "\n## tiermail vs Dovecot (`benches/peers/run.sh`)\n\n" + "\n".join(md) + "\n"
open("docs/benchmarks.md", "w").write(doc)
print("\n".join(md[4:-1]))
