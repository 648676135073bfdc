#!/bin/bash
# The scaling curve (issue 13) on a machine with more cores, e.g. a lent
# device with Python but without this project's dependencies. Prepare here:
#   echo /.whl/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_17_x86_64 -d .whl msgspec==0.23.0     # what the machine lacks
#   pip wheel --no-deps --no-build-isolation . -w .whl                # this project
# then run there (carry .whl):  OUT=/some/dir bash benches/curve.sh
# Each NEXMark query is its own invocation, its table appended to
# $OUT/nexmark.txt as it ends, so a run cut short keeps what it finished;
# queries not started before BUDGET seconds are skipped (logged in
# $OUT/log.txt). Knobs: EVENTS (1,000,000), CORES (1,2,4,8,16), RUNS (3),
# BUDGET (480), PIPELINES=1 to add benches.pipelines' word count and windowed sum,
# ANATOMY=1 to add where a kernel's CPU goes at the largest kernel count
# (benches.anatomy --kernels N on q4, q5, q8: $OUT/anatomy.txt, ~15 s).
# AB=1 instead: a base commit against this tree, alternated (new, base, new,
# base: ROUNDS=2), NEXMark QUERIES (q4,q5,q8) at CORES (16), into
# $OUT/ab.txt; prepare the base's wheels in .whl-base (carry it too):
#   git worktree add /tmp/base <commit> && pip wheel --no-deps --no-build-isolation /tmp/base -w .whl-base
#   cp .whl/msgspec-* .whl-base/ && echo /.whl-base/ >> .git/info/exclude
set -u
start=$(date +%s)
out=${OUT:?set OUT to a folder for the results}
mkdir -p "$out"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || exit 3
if [ "${AB:-0}" = 1 ]; then
    rm -rf /tmp/site-base
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site-base \
        .whl-base/*.whl || exit 3
fi
export PYTHONPATH=/tmp/site PYTHONUNBUFFERED=1
# run from a copy of benches/ alone: ./kernel here is the source tree, not the installed package
rm -rf /tmp/curve && mkdir -p /tmp/curve && cp -r benches /tmp/curve/ && cd /tmp/curve || exit 4
{ date; nproc; lscpu | head -20; python3 -V; grep -H . /sys/devices/system/cpu/cpu*/topology/thread_siblings_list; } \
    > "$out/machine.txt" 2>&1
if [ "${AB:-0}" = 1 ]; then
    for round in $(seq "${ROUNDS:-2}"); do
        for site in site site-base; do
            for q in $(echo "${QUERIES:-q4,q5,q8}" | tr , ' '); do
                left=$(( ${BUDGET:-480} - ($(date +%s) - start) ))
                if [ $left -lt 15 ]; then echo "ab $site $q skipped" >> "$out/log.txt"; continue; fi
                echo "== $site round $round $q" >> "$out/ab.txt"
                PYTHONPATH=/tmp/$site timeout $left python3 -m benches.nexmark --events "${EVENTS:-1000000}" \
                    --cores "${CORES:-16}" --runs "${RUNS:-3}" --no-bytewax --queries $q >> "$out/ab.txt" 2>&1
                echo "ab $site round $round $q rc=$? at $(( $(date +%s) - start )) s" >> "$out/log.txt"
            done
        done
    done
    exit 0
fi
if [ "${PIPELINES:-0}" = 1 ]; then
    timeout 150 python3 -m benches.pipelines --only wordcount,windows --cores "${CORES:-1,2,4,8,16}" --reps 5 \
        --no-bytewax > "$out/pipelines.txt" 2>&1
    echo "pipelines rc=$? at $(( $(date +%s) - start )) s" >> "$out/log.txt"
fi
if [ "${ANATOMY:-0}" = 1 ]; then
    most=$(echo "${CORES:-1,2,4,8,16}" | tr , '\n' | sort -n | tail -1)
    for q in q4 q5 q8; do
        timeout 60 python3 -m benches.anatomy --pipeline $q --events "${EVENTS:-1000000}" --kernels "$most" \
            >> "$out/anatomy.txt" 2>&1
        echo "anatomy $q rc=$? at $(( $(date +%s) - start )) s" >> "$out/log.txt"
    done
fi
for q in q0 q1 q2 q3 q4 q5 q6 q7 q8; do
    left=$(( ${BUDGET:-480} - ($(date +%s) - start) ))
    if [ $left -lt 15 ]; then echo "$q skipped" >> "$out/log.txt"; continue; fi
    timeout $left python3 -m benches.nexmark --events "${EVENTS:-1000000}" --cores "${CORES:-1,2,4,8,16}" \
        --runs "${RUNS:-3}" --no-bytewax --queries $q >> "$out/nexmark.txt" 2>&1
    echo "$q rc=$? at $(( $(date +%s) - start )) s" >> "$out/log.txt"
done
