#!/usr/bin/env bash
# The admin API with curl: log in, create an API key, switch the served model and follow the
# switch until it is done. Usage: GWPROXY_USER=… GWPROXY_PASSWORD=… bash examples/admin.sh PROFILE
set -euo pipefail
BASE=${GWPROXY_BASE_URL:-http://localhost:8080}
PROFILE=${1:?usage: admin.sh PROFILE_ID (GET /api/models/profiles lists them)}
json() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }

# 1. Log in: an access token (JWT) and a refresh token.
TOKEN=$(curl -fsS "$BASE/api/auth/login" -H 'Content-Type: application/json' \
  -d "{\"username\": \"$GWPROXY_USER\", \"password\": \"$GWPROXY_PASSWORD\"}" | json "['access_token']")
AUTH="Authorization: Bearer $TOKEN"

# 2. Create an API key for a script (the key is shown this once).
KEY=$(curl -fsS "$BASE/api/auth/keys" -H "$AUTH" -H 'Content-Type: application/json' \
  -d '{"name": "admin.sh example", "expires_days": 1}' | json "['key']")
echo "created key ${KEY:0:12}…"

# 3. What is served now, and what would fit.
curl -fsS "$BASE/api/models/status" -H "$AUTH" | json "['current_profile']" | sed 's/^/serving: /'

# 4. Switch, following the progress events until the job is done.
curl -fsS -N "$BASE/api/models/events" -H "$AUTH" > events.$$ &
FOLLOW=$!
sleep 0.5
curl -fsS -X POST "$BASE/api/models/switch" -H "$AUTH" -H 'Content-Type: application/json' \
  -d "{\"profile_id\": \"$PROFILE\"}" | json "['job']['id']" | sed 's/^/job: /'
for _ in $(seq 1 600); do
  # the first event is the status (it may show the last job, done); then this job's events
  if grep '^data:' events.$$ | sed 1d | grep -q '"done":true'; then break; fi
  sleep 0.1
done
kill $FOLLOW 2>/dev/null || true
grep '^data:' events.$$ | sed 1d | python3 -c '
import json, sys
for line in sys.stdin:
    job = json.loads(line[5:])["job"]
    print("  %-12s %5.0f%%  %s" % (job["state"], job["progress"] * 100, job["phase"]))
'
rm -f events.$$
curl -fsS "$BASE/api/models/status" -H "$AUTH" | json "['job']['outcome']" | sed 's/^/outcome: /'
curl -fsS "$BASE/v1/models" -H "Authorization: Bearer $KEY" | json "['data'][0]['id']" | sed 's/^/now serving: /'
