#!/usr/bin/env bash
# `make test-rasa`: the optional Rasa backend against real Rasa servers.
#   1. .venv-rasa (Python 3.10, rasa==3.6.21; Rasa 3.6 does not run on 3.11), built once;
#   2. trains nlu/rasa/config.yml (DIET) and nlu/rasa/config-logreg.yml on nlu/data/nlu.yml
#      into .rasa-models/ (reused while data and config are unchanged);
#   3. serves each model with `rasa run --enable-api` on a free local port;
#   4. runs tests/rasa (pytest -m rasa) against the DIET server, then prints
#      `python -m bot.app.nlu_compare` (embedded NLU vs both Rasa models on the held-out sets).
# NLU_DATA=path overrides the training file.
set -euo pipefail
cd "$(dirname "$0")/.."

RASA_VERSION=3.6.21
RASA_VENV=.venv-rasa
MODELS=.rasa-models
NLU_DATA=${NLU_DATA:-nlu/data/nlu.yml}
export RASA_TELEMETRY_ENABLED=false RASA_CACHE_DIRECTORY="$PWD/$MODELS/cache"
export TF_CPP_MIN_LOG_LEVEL=2 SQLALCHEMY_SILENCE_UBER_WARNING=1 PYTHONWARNINGS=ignore

die() { echo "test-rasa: $*" >&2; exit 1; }
now() { date +%s; }

[ -f "$NLU_DATA" ] || die "no training data at $NLU_DATA"
[ -x .venv/bin/python ] || die "no project venv: run \`make install\` first"

find_python310() {
  local candidate=""
  for path in "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.10.*/bin/python; do
    [ -x "$path" ] && candidate=$path
  done
  [ -n "$candidate" ] || candidate=$(command -v python3.10 || true)
  echo "$candidate"
}

if [ ! -f "$RASA_VENV/.rasa-$RASA_VERSION" ]; then
  if [ ! -x "$RASA_VENV/bin/python" ]; then
    python310=$(find_python310)
    [ -n "$python310" ] || die "Rasa $RASA_VERSION needs Python 3.10: install it with \
pyenv (\`pyenv install 3.10\`) or put python3.10 on PATH"
    echo "test-rasa: creating $RASA_VENV with $python310" >&2
    "$python310" -m venv "$RASA_VENV"
  fi
  echo "test-rasa: installing rasa==$RASA_VERSION into $RASA_VENV (a few minutes, ~3 GB)" >&2
  started=$(now)
  # Only pip is upgraded: rasa pins its own setuptools and packaging versions.
  "$RASA_VENV/bin/pip" install --quiet --upgrade "pip<24.1"  # the pip this was tested with
  "$RASA_VENV/bin/pip" install --quiet "rasa==$RASA_VERSION"
  touch "$RASA_VENV/.rasa-$RASA_VERSION"
  echo "test-rasa: installed in $(( $(now) - started ))s" >&2
fi
RASA="$RASA_VENV/bin/rasa"

mkdir -p "$MODELS"
train() {  # train NAME CONFIG -> prints the model path; retrains only when inputs change
  local name=$1 config=$2 digest model started
  digest=$(cat "$NLU_DATA" "$config" | sha256sum | cut -c1-12)
  model="$MODELS/$name-$digest.tar.gz"
  if [ ! -f "$model" ]; then
    echo "test-rasa: training $name ($config)" >&2
    started=$(now)
    "$RASA" train nlu --nlu "$NLU_DATA" -c "$config" --out "$MODELS" \
      --fixed-model-name "$name-$digest" >"$MODELS/$name-train.log" 2>&1 \
      || { tail -30 "$MODELS/$name-train.log" >&2; die "training $name failed"; }
    echo "test-rasa: trained $name in $(( $(now) - started ))s" >&2
  else
    echo "test-rasa: reusing $model" >&2
  fi
  echo "$model"
}

pids=()
cleanup() {  # TERM each server's process group, give it 10 s, then KILL
  for pid in "${pids[@]}"; do kill -TERM -- "-$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do
    for _ in $(seq 20); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
    kill -KILL -- "-$pid" 2>/dev/null || true
  done
}
trap cleanup EXIT

serve() {  # serve NAME MODEL -> sets $url once the model is loaded (no subshell: keeps $pids)
  local name=$1 model=$2 port pid
  url=""
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  # Own process group, so the trap stops rasa and anything it started.
  setsid "$RASA" run --enable-api -m "$model" -i 127.0.0.1 --port "$port" \
    >"$MODELS/$name-server.log" 2>&1 &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 300); do
    if python3 - "http://127.0.0.1:$port/status" <<'EOF' 2>/dev/null; then
import json, sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=2) as response:
    sys.exit(0 if json.load(response).get("model_file") else 1)
EOF
      url="http://127.0.0.1:$port"
      return
    fi
    kill -0 "$pid" 2>/dev/null || { tail -30 "$MODELS/$name-server.log" >&2; die "$name server exited"; }
    sleep 1
  done
  die "$name server did not load its model within 300s (see $MODELS/$name-server.log)"
}

diet_model=$(train diet nlu/rasa/config.yml)
logreg_model=$(train logreg nlu/rasa/config-logreg.yml)
serve diet "$diet_model"; diet_url=$url
serve logreg "$logreg_model"; logreg_url=$url
echo "test-rasa: diet at $diet_url, logreg at $logreg_url" >&2

RASA_URL=$diet_url .venv/bin/python -m pytest -q -m rasa tests/rasa
.venv/bin/python -m bot.app.nlu_compare --rasa "diet=$diet_url" --rasa "logreg=$logreg_url"
