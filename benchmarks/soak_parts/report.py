"""The soak's report: its parts' rows grouped by section, as JSON and Markdown."""

import json
import os

import machine
from soak_parts import common


def report(results, seed, quick, seconds):
    """The soak's JSON: a section per fault kind, rows, figures, notes.

    Args:
      results: list of (part name, the part's `common.part` dicts, its wall
        seconds), in the order the parts ran.
      seed: the soak's seed.
      quick: whether it ran in quick mode.
      seconds: the soak's wall time.

    Returns:
      dict: machine, seed, quick, seconds, totals, ok (every row ok) and
      sections (in `common.SECTIONS` order, each with rows (tagged with
      their part), figures (keys prefixed with the part), notes and the
      parts' wall seconds).
    """
    sections = {}
    for name, parts, wall in results:
        for part in parts:
            section = sections.setdefault(part["section"], {
                "rows": [], "figures": {}, "notes": [], "parts": {}})
            section["rows"].extend(dict(r, part=name) for r in part["rows"])
            section["figures"].update(
                {"%s.%s" % (name, k): v for k, v in part["figures"].items()})
            section["notes"].extend(part["notes"])
            section["parts"][name] = round(wall, 1)
    ordered = {s: sections[s] for s in common.SECTIONS if s in sections}
    rows = [r for s in ordered.values() for r in s["rows"]]
    return {
        "machine": {"cpu": machine.cpu_model(), "cores": os.cpu_count(),
                    "load_average": list(os.getloadavg())},
        "seed": seed, "quick": quick, "seconds": round(seconds, 1),
        "totals": {"faults_injected": sum(r["injected"] for r in rows),
                   "survived": sum(r["survived"] for r in rows),
                   "lost": sum(r["lost"] for r in rows),
                   "rows_not_ok": sum(not r["ok"] for r in rows)},
        "ok": all(r["ok"] for r in rows),
        "sections": ordered,
    }


def markdown(summary):
    """The soak's table, its figures and notes as Markdown.

    Args:
      summary: a `report(...)` dict.

    Returns:
      str.
    """
    lines = ["| section | fault | injected | survived | lost | ok | detail |",
             "|---|---|---:|---:|---:|---|---|"]
    for name, section in summary["sections"].items():
        for r in section["rows"]:
            lines.append("| %s | %s | %d | %d | %d | %s | %s |" % (
                name, r["fault"], r["injected"], r["survived"], r["lost"],
                "yes" if r["ok"] else "**NO**",
                r["detail"].replace("|", "/").replace("\n", " ")))
    totals = summary["totals"]
    lines += ["", "Faults injected: %d; survived: %d; lost: %d; %s "
              "(seed %d, %s, %.0f s, %s, %d cores)." % (
                  totals["faults_injected"], totals["survived"],
                  totals["lost"], "all ok" if summary["ok"] else
                  "%d row(s) NOT ok" % totals["rows_not_ok"], summary["seed"],
                  "quick" if summary["quick"] else "full",
                  summary["seconds"], summary["machine"]["cpu"],
                  summary["machine"]["cores"])]
    figures = [(n, k, v) for n, s in summary["sections"].items()
               for k, v in s["figures"].items()]
    if figures:
        lines += ["", "| section | figure | value |", "|---|---|---|"]
        lines += ["| %s | %s | %s |" % (n, k, json.dumps(v))
                  for n, k, v in figures]
    notes = [(n, t) for n, s in summary["sections"].items()
             for t in s["notes"]]
    if notes:
        lines += ["", "Notes:", ""]
        lines += ["- %s: %s" % (n, t.replace("\n", "\n  ")) for n, t in notes]
    return "\n".join(lines) + "\n"
