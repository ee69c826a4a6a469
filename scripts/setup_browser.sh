#!/usr/bin/env bash
# Make sure a Chromium is installed for the browser test of the web demo (tests/test_app_browser.py), which drives
# it headless through Playwright. Uses $READ_CHROMIUM or a chromium on PATH; otherwise, as root with apt-get,
# installs Debian's chromium package (about a minute the first time). It never fails: when no browser can be had it
# says so, and the browser test then fails with the same advice.
set -uo pipefail
if [ -n "${READ_CHROMIUM:-}" ] || command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
    || command -v google-chrome >/dev/null 2>&1; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "[setup] installing Debian's chromium for the browser test" >&2
  if DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null 2>&1 \
      && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium fonts-liberation \
         >/dev/null 2>&1 && command -v chromium >/dev/null 2>&1; then
    exit 0
  fi
  echo "[setup] could not install chromium with apt-get; the browser test will fail" >&2
else
  echo "[setup] no Chromium found and not root with apt-get: the browser test will fail (install Debian's" \
       "chromium package, set READ_CHROMIUM=/path/to/chrome, or READ_SKIP_BROWSER_TEST=1 to skip it)" >&2
fi
exit 0
