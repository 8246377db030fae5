#!/usr/bin/env bash
# Regenerate every place that shows the embedded default suite's numbers, from scratch (fresh cache and results):
# the README table (`python -m benchmark suite default --std`), the four leaderboard entries
# (leaderboard/entries/default/*.json via `python -m benchmark submit`), LEADERBOARD.md and the plots.
# Run from a clean checkout (the records carry the git revision), in the project's environment. ~5-10 min on 2 cores.
#   bash scripts/regenerate_default.sh [WORK_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-$(mktemp -d)}
python -m benchmark suite default --std --cache-dir "$work/cache" --results-dir "$work/results" | tee "$work/suite.txt"
cite="Stutz et al., Bit Error Robustness for Energy-Efficient DNN Accelerators, MLSys 2021 (arXiv 2006.13977); reproduced by bitbench"
link=https://arxiv.org/abs/2006.13977
for pair in normal:lenet-normal rquant:lenet-rquant clip:lenet-clip randbet__p=0.1:lenet-randbet-p0.1; do
    slug=${pair%%:*} name=${pair#*:}
    python -m benchmark submit "$work/results/default/lenet/$slug"/*.json --name "$name" --citation "$cite" --link "$link"
done
python -m benchmark leaderboard --plots leaderboard/plots
# the README's table: the block after "The embedded default suite (`python -m benchmark suite default --std`"
python - "$work/suite.txt" <<'PY'
import re, sys
table = open(sys.argv[1]).read().strip("\n")
readme = open("README.md").read()
pat = re.compile(r"(The embedded default suite \(`python -m benchmark suite default --std`.*?\n```\n)(.*?)(\n```)", re.S)
if not pat.search(readme):
    sys.exit("README.md: the default-suite table was not found")
open("README.md", "w").write(pat.sub(lambda m: m.group(1) + table + m.group(3), readme, count=1))
PY
echo "regenerated from $work"
