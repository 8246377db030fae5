#!/usr/bin/env bash
# Regenerate every place that shows the embedded default suite's numbers, from scratch (fresh cache and results):
# the README's two default-suite tables (`python -m benchmark suite default --std`: random bit errors, then the
# adversarial part), one leaderboard entry per defense of the suite (leaderboard/entries/default/<model>-<defense>.json
# via `python -m benchmark submit`), LEADERBOARD.md and the plots.
# Run from a clean checkout (the records carry the git revision), in the project's environment. ~5-10 min on 2 cores.
#   bash scripts/regenerate_default.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
mkdir -p "$work"
python -m benchmark suite default --std --no-progress --cache-dir "$work/cache" --results-dir "$work/results" \
    | tee "$work/suite.txt"
cite="Stutz et al., Bit Error Robustness for Energy-Efficient DNN Accelerators, MLSys 2021 (arXiv 2006.13977); reproduced by bitbench"
link=https://arxiv.org/abs/2006.13977
# One entry per (model, defense) of the records; the entry name is "<model>-<defense spec>" with the spec's
# separators as dashes ("randbet:p=0.1" -> lenet-randbet-p0.1, "rquant:bits=4,granularity=group:32" ->
# lenet-rquant-bits4-group-32, "rquant+secded" -> lenet-rquant-secded).
python - "$work/results/default" > "$work/entries.txt" <<'PY'
import collections, glob, json, os, re, sys
groups = collections.defaultdict(list)
for path in sorted(glob.glob(os.path.join(sys.argv[1], "**", "*.json"), recursive=True)):
    rec = json.load(open(path))
    groups[(rec["model"], rec["defense"])].append(path)
for (model, defense), paths in sorted(groups.items()):
    name = re.sub(r"[^a-z0-9.]+", "-", defense.lower().replace("granularity=", "").replace("=", "")).strip("-")
    print(f"{model}-{name}\t" + "\t".join(paths))
PY
rm -f leaderboard/entries/default/*.json
while IFS=$'\t' read -r name files; do
    # shellcheck disable=SC2086
    python -m benchmark submit $files --name "$name" --citation "$cite" --link "$link"
done < "$work/entries.txt"
python -m benchmark leaderboard --plots leaderboard/plots
# The README's tables: the blocks after "The embedded default suite (`python -m benchmark suite default --std`" (the
# random bit errors) and after "The default suite runs BFA" (the adversarial part), in the order the suite prints them.
python - "$work/suite.txt" <<'PY'
import re, sys
tables = [t.strip("\n") for t in re.split(r"\n\s*\n", open(sys.argv[1]).read().strip("\n")) if t.strip()]
readme = open("README.md").read()
for lead, table in zip(("The embedded default suite (`python -m benchmark suite default --std`",
                        "The default suite runs BFA"), tables):
    pat = re.compile("(" + re.escape(lead) + r".*?\n```\n)(.*?)(\n```)", re.S)
    if not pat.search(readme):
        sys.exit(f"README.md: the table after {lead!r} was not found")
    readme = pat.sub(lambda m: m.group(1) + table + m.group(3), readme, count=1)
open("README.md", "w").write(readme)
PY
echo "regenerated from $work"
