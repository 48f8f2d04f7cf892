#!/bin/sh
# One-shot: a join token for the agent, and the registration entry of the MCP server workload
# (the same SPIFFE ID as fixtures/spire/entries.json; uid 1000 runs `iia` in its container).
set -eu
SOCKET=/tmp/spire-server/private/api.sock
spire-server token generate -socketPath "$SOCKET" -spiffeID spiffe://iia.lab/agent \
  | sed -n 's/^Token: //p' > /run/spire/shared/join_token
spire-server entry create -socketPath "$SOCKET" \
  -parentID spiffe://iia.lab/agent \
  -spiffeID spiffe://iia.lab/agentic-workload \
  -selector unix:uid:1000 \
  -jwtSVIDTTL 300
echo "spire-init: join token written, spiffe://iia.lab/agentic-workload registered"
