# Shared by the gateway benchmarks (sourced, not run): the upstream's answer,
# free ports, and keytrail's benchmark setup.

# A ~100-byte answer from the upstream.
BODY='{"status":"ok","service":"bench-upstream","items":[1,2,3],"note":"a small fixed answer for proxies"}'
TOKEN=bench-admin-token-0123456789

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# setup_keytrail ADMIN_PORT UPSTREAM_PORT: a tenant, an api on / to the
# upstream, a consumer in a tier and a key; prints the key.
setup_keytrail() {
  local a="http://127.0.0.1:$1" h=(-H "Authorization: Bearer $TOKEN" -H 'content-type: application/json')
  curl -sf "${h[@]}" "$a/v1/tenants" -d '{"id":"bench","name":"Bench"}' >/dev/null
  curl -sf "${h[@]}" "$a/v1/tenants/bench/apis" -d "{\"id\":\"api\",\"path_prefix\":\"/\",\"upstream\":\"http://127.0.0.1:$2\"}" >/dev/null
  # A tier whose limits the run never reaches, so every call pays for the
  # rate-limit check (GCRA and daily cap) as a real deployment would.
  curl -sf "${h[@]}" "$a/v1/tenants/bench/tiers" -d '{"id":"bench","rate_limit":{"requests_per_minute":1000000000,"burst":1000000},"daily_quota":1000000000000}' >/dev/null
  local consumer
  consumer=$(curl -sf "${h[@]}" "$a/v1/tenants/bench/consumers" -d '{"name":"wrk","tier":"bench"}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  curl -sf "${h[@]}" "$a/v1/tenants/bench/consumers/$consumer/keys" -d '{}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["key"])'
}
