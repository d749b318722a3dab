#!/usr/bin/env bash
# The email channel's IMAP mode is tested against a real Dovecot (tests/integration/
# test_email.py starts a private instance on a free port). Install Debian's when absent.
set -euo pipefail
if command -v dovecot >/dev/null 2>&1 || [ -x /usr/sbin/dovecot ]; then exit 0; fi
echo "ensure-dovecot: installing Debian's dovecot-imapd" >&2
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dovecot-imapd >/dev/null
