#!/usr/bin/env bash
# One idempotent set-up for a fresh Debian machine, used by ./run and by CI: Debian packages
# (PostgreSQL, Redis, OpenJDK, Maven, pgBackRest) when missing, the virtual environment with the
# package and its dev extras, and the pinned QuestDB jar from Maven Central. A second run changes
# nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || command -v initdb >/dev/null \
  || missing+=(postgresql postgresql-contrib)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v redis-benchmark >/dev/null || missing+=(redis-tools)
java_major=$(java -XshowSettings:properties -version 2>&1 \
  | sed -n 's/.*java\.specification\.version = \([0-9]*\).*/\1/p' || true)
[ "${java_major:-0}" -ge 17 ] 2>/dev/null || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v pgbackrest >/dev/null || missing+=(pgbackrest)

if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "setup: missing Debian packages: ${missing[*]}; install them as root (or run this as root)" >&2
    exit 72
  fi
  echo "setup: installing ${missing[*]}"
  # Keep the packages' maintainer scripts from starting system-wide servers on default ports:
  # the stack runs its own private servers.
  policy=/usr/sbin/policy-rc.d
  had_policy=0; [ -e "$policy" ] && had_policy=1
  if [ $had_policy -eq 0 ]; then printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  if [ $had_policy -eq 0 ]; then rm -f "$policy"; fi
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || { echo "setup: Python 3.11 or newer is needed ($python)" >&2; exit 72; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.tradestore-installed
wanted=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$wanted" ]; then
  echo "setup: installing Python packages into .venv"
  .venv/bin/pip install --quiet --disable-pip-version-check -e '.[dev]'
  echo "$wanted" >"$stamp"
fi

.venv/bin/tradestore stack fetch
