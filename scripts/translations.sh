#!/usr/bin/env bash
# Extracts every message from the code and templates, updates the catalogues and compiles them.
# Usage: scripts/translations.sh            (update the .po files, then compile the .mo files)
#        scripts/translations.sh add xx     (start a catalogue for a new language xx)
# Then translate the new or changed entries in translations/*/LC_MESSAGES/messages.po (no entry
# may stay empty or "fuzzy": tests/test_i18n.py fails until each is done) and run it again.
set -euo pipefail
cd "$(dirname "$0")/.."
pybabel=.venv/bin/pybabel
# N_ marks messages that signup.py keeps untranslated until views.py shows them.
"$pybabel" -q extract -F babel.cfg -k lazy_gettext -k _l -k N_ --no-location \
  --sort-output --omit-header -o translations/messages.pot .
if [ "${1:-}" = add ]; then
  "$pybabel" init -i translations/messages.pot -d translations -l "$2"
fi
"$pybabel" -q update -i translations/messages.pot -d translations --no-fuzzy-matching \
  --ignore-obsolete
"$pybabel" compile -d translations --statistics
