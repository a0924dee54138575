#!/usr/bin/env bash
# Reproduce the activation study: one train_simple.py command per (activation, seed), then the analysis.
# Every command is safe to run twice or beside another (complete runs are skipped, unfinished ones
# resume, a lock keeps one writer per run), so rerunning this script continues where it stopped.
set -euo pipefail
CALLER_DIR=$PWD
cd "$(dirname "$0")"
ROOT=$PWD

usage() {
  cat <<'USAGE'
Usage: bash reproduce.sh [options]

Trains relu, gelu, silu, then the parameter-matched gated variants geglu, swiglu, reglu, seed by
seed (a study stopped early has every activation at the seeds it finished), with the reference
study's settings (WikiText-2 train split, 3 epochs, batch 8, reference preset, lines layout), then runs
analyze_results.py. Resumes where it stopped. A run that fails does not
stop the others: the script goes on, analyses what finished, and exits 1 listing the failures, each
with whether a rerun resumes it. Paths are read relative to the folder you run it from.

Options (environment variable in brackets):
  --data_dir DIR        local WikiText-2 raw files [WIKITEXT2_DIR]; default: the Hugging Face hub
  --tokenizer DIR       local GPT-2 tokenizer folder [GPT2_TOKENIZER]; default: gpt2 from the hub
  --train_split NAME    split to train on (default train)            [TRAIN_SPLIT]
  --val_split NAME      split to evaluate on (default validation)    [VAL_SPLIT]
  --epochs N            epochs per run (default 3)                   [EPOCHS]
  --max_steps N         stop each run after N steps (default: none)  [MAX_STEPS]
  --seeds "S1 S2 ..."   seeds (default "42 43 44")                   [SEEDS]
  --lrs "LR1 LR2 ..."   peak learning rates (default "3e-4"); several make a sweep, every run named
                        <activation>[_matched]_lr<LR as %g writes it>_seed<seed> [LRS]
  --evals_per_epoch N   validation passes per epoch, for curves (default 4; 1: epoch ends only) [EVALS_PER_EPOCH]
  --ungated "A B ..."   ungated activations (default "relu gelu silu")        [UNGATED]
  --gated "A B ..."     gated activations, parameter-matched (default "geglu swiglu reglu") [GATED]
  --output_dir DIR      logs and figures (default results)           [OUTPUT_DIR]
  --jobs N              training processes side by side, CPU threads split between them (default 1) [JOBS]
  --extra "ARGS"        more train_simple.py flags, split at spaces, never glob-expanded,
                        e.g. "--log_every 5" [EXTRA]
  --list                print the training commands, one per line, and nothing else (for xargs -P,
                        GNU parallel or a job array); each starts with a cd to this repository and
                        works from any folder; --jobs N sets their --threads to nproc / N
  -h, --help            this help

Without hub access (train on test, select on one half of validation, report on the other):
  bash reproduce.sh --data_dir ../shared/data/wikitext-2-raw-v1 --tokenizer ../shared/data/gpt2-tokenizer \
      --train_split test --val_split validation:A --extra "--test_split validation:B" \
      --output_dir results/local_rerun --jobs 2
USAGE
}

PYTHON=${PYTHON:-python}
DATA_DIR=${WIKITEXT2_DIR:-}; TOKENIZER=${GPT2_TOKENIZER:-}
TRAIN_SPLIT=${TRAIN_SPLIT:-train}; VAL_SPLIT=${VAL_SPLIT:-validation}
EPOCHS=${EPOCHS:-3}; MAX_STEPS=${MAX_STEPS:-}; SEEDS=${SEEDS:-42 43 44}; LRS=${LRS:-3e-4}
EVALS_PER_EPOCH=${EVALS_PER_EPOCH:-4}
UNGATED=${UNGATED:-relu gelu silu}; GATED=${GATED:-geglu swiglu reglu}
OUTPUT_DIR=${OUTPUT_DIR:-results}; JOBS=${JOBS:-1}; EXTRA=${EXTRA:-}; LIST=0

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --list) LIST=1; shift ;;
    --data_dir|--tokenizer|--train_split|--val_split|--epochs|--max_steps|--seeds|--lrs|--evals_per_epoch|--ungated|--gated|--output_dir|--jobs|--extra)
      [ $# -ge 2 ] || { echo "error: $1 needs a value" >&2; exit 2; }
      case "$1" in
        --data_dir) DATA_DIR=$2 ;; --tokenizer) TOKENIZER=$2 ;; --train_split) TRAIN_SPLIT=$2 ;;
        --val_split) VAL_SPLIT=$2 ;; --epochs) EPOCHS=$2 ;; --max_steps) MAX_STEPS=$2 ;; --seeds) SEEDS=$2 ;;
        --lrs) LRS=$2 ;; --evals_per_epoch) EVALS_PER_EPOCH=$2 ;;
        --ungated) UNGATED=$2 ;; --gated) GATED=$2 ;; --output_dir) OUTPUT_DIR=$2 ;; --jobs) JOBS=$2 ;;
        --extra) EXTRA=$2 ;;
      esac
      shift 2 ;;
    *) echo "error: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ "$JOBS" =~ ^[1-9][0-9]*$ ]] || { echo "error: --jobs must be a positive integer" >&2; exit 2; }

from_caller() {  # a path as the caller meant it: relative to the folder the script was run from
  case "$1" in /*) echo "$1" ;; *) echo "$CALLER_DIR/$1" ;; esac
}
OUTPUT_DIR=$(from_caller "$OUTPUT_DIR")
[ -n "$DATA_DIR" ] && DATA_DIR=$(from_caller "$DATA_DIR")
[ -n "$TOKENIZER" ] && [ -e "$CALLER_DIR/$TOKENIZER" ] && TOKENIZER=$(from_caller "$TOKENIZER")  # else a hub name
for split in TRAIN_SPLIT VAL_SPLIT; do  # a split is a name (train, validation, test) or a text file
  [ -f "$CALLER_DIR/${!split}" ] && printf -v "$split" '%s' "$(from_caller "${!split}")"
done

threads=$(( $(nproc) / JOBS )); [ "$threads" -ge 1 ] || threads=1
common=(--num_epochs "$EPOCHS" --batch_size 8 --train_split "$TRAIN_SPLIT" --val_split "$VAL_SPLIT"
        --evals_per_epoch "$EVALS_PER_EPOCH" --output_dir "$OUTPUT_DIR" --threads "$threads" --resume)
[ -n "$DATA_DIR" ] && common+=(--data_dir "$DATA_DIR")
[ -n "$TOKENIZER" ] && common+=(--tokenizer "$TOKENIZER")
[ -n "$MAX_STEPS" ] && common+=(--max_steps "$MAX_STEPS")
read -r -a extra_args <<< "$EXTRA"  # split at whitespace; a * or ? stays itself
common+=("${extra_args[@]}")

# shellcheck disable=SC2206
lrs=($LRS)

run_name() {  # activation, "--match_params" or "", lr, seed: train_simple.py's own default name
  local lr_part=""
  [ "${#lrs[@]}" -gt 1 ] && lr_part="_lr$(printf '%g' "$3")"  # as Python's :g writes it (catalog.run_name)
  echo "$1${2:+_matched}${lr_part}_seed$4"
}

# One complete, shell-quoted command per line: one run each, runnable from any folder.
command_for() {  # activation, "--match_params" or "", lr, seed
  printf 'cd %q && ' "$ROOT"
  printf '%q ' "$PYTHON" train_simple.py --activation "$1" ${2:+"$2"} --lr "$3" --seeds "$4" \
    --run_name "$(run_name "$@")" "${common[@]}"
  echo
}

list_commands() {
  local a lr s
  for s in $SEEDS; do for lr in "${lrs[@]}"; do  # seed by seed: a study stopped early stays balanced
    for a in $UNGATED; do command_for "$a" "" "$lr" "$s"; done
    for a in $GATED; do command_for "$a" --match_params "$lr" "$s"; done
  done; done
}

if [ "$LIST" -eq 1 ]; then list_commands; exit 0; fi

failures=$(mktemp)
trap 'rm -f "$failures"' EXIT
# xargs runs the next command when one fails; each failure is noted, with its exit code, for the
# closing report.
list_commands | xargs -d '\n' -P "$JOBS" -n 1 bash -c 'eval "$1" || printf "%s\t%s\n" "$?" "$1" >> "$0"' "$failures" \
  || true

rerun_hint() {  # exit code, command: what rerunning this script will do with that run
  local name log_status
  name=$(sed -E 's/.* --run_name ([^ ]+) .*/\1/' <<< "$2")
  log_status=$("$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["status"])' \
               "$OUTPUT_DIR/$name.json" 2>/dev/null || true)
  case "$1:$log_status" in
    2:*) echo "refused, see its error above: a rerun is refused again until that is fixed" ;;
    *:"failed: non-finite"*) echo "diverged (non-finite loss): a rerun keeps it failed; its command with --overwrite trains it again" ;;
    *) echo "${log_status:-no log}: a rerun resumes it" ;;
  esac
}

status=0
"$PYTHON" analyze_results.py --results_dir "$OUTPUT_DIR" || status=$?
if [ -s "$failures" ]; then
  echo "error: $(wc -l < "$failures") training command(s) failed:" >&2
  while IFS=$'\t' read -r code command; do
    echo "  [$(rerun_hint "$code" "$command")] $command" >&2
  done < "$failures"
  status=1
fi
exit "$status"
