#!/usr/bin/env bash
# Installs everything socialfeat and its tests need on a fresh Debian/Ubuntu machine:
# system tools (ffmpeg, espeak-ng: the tests generate real media with them; chromium: the
# report is checked in a headless browser), a virtual
# environment in .venv, and the package with pinned versions (constraints.txt).
set -euo pipefail
cd "$(dirname "$0")"
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
if ! command -v ffmpeg >/dev/null || ! command -v espeak-ng >/dev/null || ! command -v chromium >/dev/null; then
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    ffmpeg espeak-ng chromium >/dev/null
fi
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
.venv/bin/socialfeat --version
