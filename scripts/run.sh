#!/usr/bin/env bash
# Starts the portal at http://127.0.0.1:8000 (BIND=host:port to change it).
# With no KEYGEN_* settings it runs a demo against the built-in Keygen emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh requirements.txt
export BIND=${BIND:-127.0.0.1:8000}

if [ -z "${KEYGEN_PRODUCT_TOKEN:-}${KEYGEN_PRODUCT_TOKEN_FILE:-}" ]; then
  emulator_port=${DEMO_KEYGEN_PORT:-8001}
  eval "$(.venv/bin/python - <<'PY'
import secrets, uuid
print(f"export KEYGEN_ACCOUNT_ID={uuid.uuid4()}")
print(f"export KEYGEN_POLICY_ID={uuid.uuid4()}")
print(f"export KEYGEN_PRODUCT_TOKEN=prod-{secrets.token_hex(32)}v3")
print(f"export DEMO_SECRET_KEY={secrets.token_urlsafe(48)}")
PY
)"
  export KEYGEN_API_URL="http://127.0.0.1:${emulator_port}" DEMO_MODE=true COOKIE_SECURE=false
  export SECRET_KEY=${SECRET_KEY:-$DEMO_SECRET_KEY}
  # The demo's settings, for poking at the emulator (GET $KEYGEN_API_URL/_emulator/state).
  demo_dir=${DEMO_DIR:-.demo}
  mkdir -p "$demo_dir"
  env | grep -E '^KEYGEN_' | sort > "$demo_dir/keygen.env"
  # The demo's emulator starts empty, so its journal does too.
  rm -f "$demo_dir"/portal.db*
  export DATABASE_URL=${DATABASE_URL:-sqlite:///$(cd "$demo_dir" && pwd)/portal.db}
  # No MAIL_SERVER in the demo: emails (keys, links, lost-key answers) are printed here instead.
  export PUBLIC_URL=${PUBLIC_URL:-http://${BIND}}
  export MAIL_DEFAULT_SENDER=${MAIL_DEFAULT_SENDER:-"Portal demo <portal@example.com>"}
  echo "DEMO MODE: no KEYGEN_* settings, so the portal talks to the built-in Keygen emulator." >&2
  echo "           Keys it shows are not real." >&2
  .venv/bin/python -m keygen_emulator --port "$emulator_port" --account-id "$KEYGEN_ACCOUNT_ID" \
    --product-token "$KEYGEN_PRODUCT_TOKEN" --policy-id "$KEYGEN_POLICY_ID" --protected &
  emulator=$!
  trap 'kill "$emulator" 2>/dev/null || true' EXIT INT TERM
  for _ in $(seq 100); do
    .venv/bin/python -c "import urllib.request; urllib.request.urlopen('$KEYGEN_API_URL/v1/ping', timeout=1)" \
      2>/dev/null && break
    kill -0 "$emulator" 2>/dev/null || { echo "the emulator did not start" >&2; exit 1; }
    sleep 0.1
  done
  # Forgot-password in the demo: the emulator posts its signed webhooks to the portal, as Keygen
  # does to the endpoint made in its dashboard, and the portal checks them with this key.
  KEYGEN_PUBLIC_KEY=$(.venv/bin/python - <<PY
import json, urllib.request
body = json.dumps({"account": "$KEYGEN_ACCOUNT_ID", "url": "$PUBLIC_URL/webhooks/keygen",
                   "subscriptions": ["user.password-reset"]}).encode()
request = urllib.request.Request("$KEYGEN_API_URL/_emulator/webhook-endpoints", data=body,
                                 headers={"Content-Type": "application/json"})
print(json.load(urllib.request.urlopen(request, timeout=5))["public_key"])
PY
)
  export KEYGEN_PUBLIC_KEY
fi

echo "Portal: http://${BIND}" >&2
.venv/bin/gunicorn -c gunicorn.conf.py 'app:create_app()'
