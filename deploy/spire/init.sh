#!/bin/sh
# One-shot: a join token for the agent, and the registration entry of the MCP server workload
# (the same SPIFFE ID as fixtures/spire/entries.json).
#
# Selectors, like the lab's (uid + executable path), read from this very image:
#   unix:uid:10001                        the `iia-mcp` user; only the `iia` container runs as it
#                                         (the developer and JupyterLab run as uid 1000)
#   unix:path:/usr/local/bin/python3.X    the image's Python, the executable of `python -m iia.serve`
# Both must match: another process of uid 10001, or the image's Python run by anyone else, gets
# no identity.
set -eu
# the join token file (read by the agent: agent.conf join_token_file) is for root only
umask 077
SOCKET=/tmp/spire-server/private/api.sock
TOKEN_FILE=/run/spire/shared/join_token
MCP_UID=$(id -u iia-mcp)
PYTHON=$(readlink -f "$(command -v python)")
spire-server token generate -socketPath "$SOCKET" -spiffeID spiffe://iia.lab/agent \
  | sed -n 's/^Token: //p' > "$TOKEN_FILE"
if [ ! -s "$TOKEN_FILE" ]; then
  echo "spire-init: spire-server token generate printed no token" >&2
  exit 1
fi
spire-server entry create -socketPath "$SOCKET" \
  -parentID spiffe://iia.lab/agent \
  -spiffeID spiffe://iia.lab/agentic-workload \
  -selector "unix:uid:$MCP_UID" \
  -selector "unix:path:$PYTHON" \
  -jwtSVIDTTL 300
echo "spire-init: join token written, spiffe://iia.lab/agentic-workload registered for" \
  "unix:uid:$MCP_UID + unix:path:$PYTHON"
