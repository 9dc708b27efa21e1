#!/bin/sh
# POST /decide with curl: one visit in, its decision out (a JSON array in gets an array out).
# The worker's web server listens on 127.0.0.1:6066 unless BANDIT_WEB_HOST/PORT say otherwise.
set -eu
URL="${BANDIT_DECIDE_URL:-http://127.0.0.1:6066/decide}"
curl -sS --fail-with-body -X POST "$URL" -H 'content-type: application/json' -d '{
  "event_id": "'"$(cat /proc/sys/kernel/random/uuid)"'",
  "experiment_id": "'"${1:-headline}"'",
  "visitor_id": "'"${2:-visitor-42}"'",
  "occurred_at": "'"$(date -u +%Y-%m-%dT%H:%M:%SZ)"'",
  "context": {"user_agent": "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X)",
              "utm_source": "instagram", "country": "US"}
}'
echo
