"""How the leaderboard ranks entries: rank groups by paired comparisons on the same chips, and censoring-aware
ranks of adversarial results. Pure functions of the entries (no torch), shared by the markdown tables, the plots
and the website.

* **Random bit errors** (RErr at the suite's ``headline_rate``): an entry's rank is 1 + the number of entries that
  are significantly better: the 95% confidence interval of the paired difference of their RErr (the same chips, a
  bootstrap over both entries' models and the shared chips) excludes 0 in their favour. Entries whose difference
  includes 0 are tied (not separable). Rows copied from a paper (no per-model values) are compared by their means.
* **Adversarial bit flips** (BFA, flips to the target): a trial that does not reach the target within the budget
  is right-censored (``> n``); an entry ranks higher (more robust) when fewer of its trials reach the target within
  the budget, then when its median flips are higher. A censored trial never ranks above a trial that reached the
  target with more flips unless the share of trials reaching it says so.
"""

from __future__ import annotations

from pathlib import Path

from bitbench.configs.entry import result_summary
from bitbench.configs.stats import derive_seed, flips_summary, rank_flips, rank_groups
from bitbench.configs.suite import Suite, same_rate

__all__ = ["headline_result", "rate_result", "result_of", "ranked_entries", "adversarial_attacks",
           "adversarial_ranked", "budget_ranks", "entry_flips", "plot_paths", "curve_summary"]


def rate_result(entry: dict, rate: float) -> dict | None:
    return next((r for r in entry["results"] if r["rate"] is not None and same_rate(r["rate"], rate)), None)


def result_of(entry: dict, attack: str) -> dict | None:
    return next((r for r in entry["results"] if r["attack"] == attack), None)


def headline_result(entry: dict, suite: Suite) -> dict | None:
    return rate_result(entry, suite.headline_rate) if suite.headline_rate is not None else None


def _mean(r: dict | None, name: str = "rerr") -> float | None:
    s = (r or {}).get("summary", {}).get(name)
    return None if s is None else s.get("mean")


def _comparable(entries: list[dict], pick, name: str = "rerr") -> list[dict]:
    """``[{"name", "values": per-model matrix}]`` (benchmark rows) or ``[{"name", "mean"}]`` (paper rows) of the
    entries that have the value (:func:`bitbench.configs.stats.rank_groups`' cells)."""
    out = []
    for e in entries:
        r = pick(e)
        if r is None or _mean(r, name) is None:
            continue
        pm = r.get("per_model", {}).get(name)
        out.append({"name": e["name"], "values": pm} if pm is not None else {"name": e["name"], "mean": _mean(r, name)})
    return out


def _ranks(cells: list[dict], seed_key: str) -> dict:
    if not cells:
        return {}
    return {c["name"]: c["rank"] for c in rank_groups(cells, lower_is_better=True, seed=derive_seed(seed_key))}


def ranked_entries(entries: list[dict], suite: Suite) -> list[tuple[int | None, dict]]:
    """``[(rank or None, entry)]``, best first: rank groups by RErr at the headline rate (module docstring);
    within a rank by mean RErr, then clean error, then name; entries without a headline value last (no rank)."""
    ranks = _ranks(_comparable(entries, lambda e: headline_result(e, suite)), f"{suite.name}|rank|{suite.headline_rate}")
    inf = float("inf")

    def key(e):
        m = _mean(headline_result(e, suite))
        c = e["clean_err"]
        return (e["name"] not in ranks, ranks.get(e["name"], 0), inf if m is None else round(m, 12),
                inf if c is None else c, e["name"])

    return [(ranks.get(e["name"]), e) for e in sorted(entries, key=key)]


def adversarial_attacks(entries: list[dict], suite: Suite) -> tuple[str | None, list[str], list[str]]:
    """The suite's attacks with curves: (the one the table ranks by -- the first whose results have an error
    target (BFA) --, the budget attacks -- no target -- by budget, the others, e.g. T-BFA with an ASR target)."""
    flips, budgets, others = None, [], []
    for a in suite.attacks:
        res = [r for e in entries for r in e["results"] if r["attack"] == a and r.get("curve") is not None]
        if not res:
            continue
        if all(r["target"] is None for r in res):
            budgets.append(a)
        elif flips is None and all(r["target"] is not None and r["target"]["metric"] == "err" for r in res):
            flips = a
        else:
            others.append(a)
    budgets.sort(key=lambda a: (max(r.get("flips") or 0 for e in entries for r in e["results"] if r["attack"] == a),
                                a))
    return flips, budgets, others


def _trials(r: dict) -> tuple[list, list]:
    """Flips to target over every model's trials and each trial's budget: a trial that did not reach the target is
    censored at the flips it spent, one that reached it at the attack's budget."""
    pm = r["per_model"]
    ftt = [v for row in pm["flips_to_target"] for v in row]
    used = [v for row in pm.get("flips_used", [[None] * len(x) for x in pm["flips_to_target"]]) for v in row]
    n = r.get("flips") or 0
    return ftt, [(u if u is not None else n) if f is None else max(n, u or 0) for f, u in zip(ftt, used)]


def entry_flips(r: dict) -> dict:
    """The censored flips-to-target summary of a result over all its models' trials."""
    ftt, budgets = _trials(r)
    return flips_summary(ftt, budgets)


def _flips_ranks(entries: list[dict], attack: str | None) -> dict:
    cells = []
    for e in entries:
        r = result_of(e, attack) if attack else None
        if r is not None and "flips_to_target" in r.get("per_model", {}):
            ftt, budgets = _trials(r)
            cells.append({"name": e["name"], "flips_to_target": ftt, "budget": budgets})
    return {c["name"]: c["rank"] for c in rank_flips(cells)} if cells else {}


def budget_ranks(entries: list[dict], attack: str | None) -> dict:
    """Rank groups by RErr under a budgeted attack (the same trials for every entry: paired by trial)."""
    if attack is None:
        return {}
    return _ranks(_comparable(entries, lambda e: result_of(e, attack)), f"rank|{attack}")


def adversarial_ranked(entries: list[dict], suite: Suite) -> list[tuple[int | None, int | None, dict]]:
    """``[(flips rank, budget rank, entry)]`` in flips-rank order (entries without the result last, by name)."""
    flips, budgets, others = adversarial_attacks(entries, suite)
    fr = _flips_ranks(entries, flips)
    br = budget_ranks(entries, budgets[-1] if budgets else None)
    ordered = sorted(entries, key=lambda e: (e["name"] not in fr, fr.get(e["name"], 0), br.get(e["name"], 0),
                                             e["name"]))
    return [(fr.get(e["name"]), br.get(e["name"]), e) for e in ordered
            if any(result_of(e, a) is not None for a in ([flips] if flips else []) + budgets + others)]


def curve_summary(entry: dict, r: dict, key: str, i: int) -> dict | None:
    """``{mean, model_sd, chip_sd, ci95}`` of a curve metric (``err``, ``asr``) at flip budget index ``i`` of result
    ``r``, over every model's trials (None where the result has no such curve); seeded by the entry and result."""
    curve = r.get("curve")
    if curve is None or key not in curve:
        return None
    mat = [[t[i] for t in m] for m in curve[key]]
    return result_summary(mat, f"{entry['suite']}|{entry['name']}|{r['attack']}|curve.{key}@{curve['flips'][i]}")


def plot_paths(data: dict, plots_dir) -> dict:
    """``{suite: <plots_dir>/<suite>.png}`` for every suite of ``data`` (``{name: (Suite, entries)}``) that has
    entries, and ``{suite + '-flips': <plots_dir>/<suite>-flips.png}`` where they carry BFA curves."""
    out = {}
    for name, (suite, entries) in data.items():
        if entries:
            out[name] = Path(plots_dir) / f"{name}.png"
            if adversarial_attacks(entries, suite)[0] is not None:
                out[f"{name}-flips"] = Path(plots_dir) / f"{name}-flips.png"
    return out
