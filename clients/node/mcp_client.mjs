// An MCP client built on the official TypeScript SDK, knowing only the MCP server's URL.
//
//   node mcp_client.mjs URL [--client-id ID | --client-metadata-url HTTPS-URL]
//
// It connects with StreamableHTTPClientTransport and an OAuthClientProvider: the SDK discovers
// the authorization server (RFC 9728, RFC 8414), registers (RFC 7591) unless --client-id names a
// pre-registered client or --client-metadata-url its Client ID Metadata Document (the SDK uses
// that URL as its client_id when the server advertises client_id_metadata_document_supported;
// it must be https), and asks the provider to send the user to the authorization URL. The
// provider prints that URL ({"event":"authorize","url":...}) for the test harness, which signs
// the user in as a browser would and follows the redirect to this process's loopback listener
// (RFC 8252); the code it brings is redeemed by the SDK (PKCE S256).
//
// Then it reads commands, one JSON object a line, on stdin and prints events, one JSON object a
// line, on stdout:
//   {"op":"list"}                                   -> {"event":"tools","tools":[...]}
//   {"op":"call","id":"c1","name":..,"arguments":{..},"timeout":ms,"progress":true}
//                                                   -> {"event":"progress","id":..,...}*
//                                                      {"event":"result","id":..,"result":..}
//                                                    | {"event":"error","id":..,"code":..,"message":..}
//   {"op":"cancel","id":"c1"}                       -> aborts the call (notifications/cancelled)
//   {"op":"close"}                                  -> exits
// Tokens stay in this process; nothing it prints carries one.
import http from "node:http";
import readline from "node:readline";
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";
import { UnauthorizedError } from "@modelcontextprotocol/sdk/client/auth.js";

const args = process.argv.slice(2);
const url = new URL(args[0]);
const option = (name) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const clientId = option("--client-id");
const clientMetadataUrl = option("--client-metadata-url");

const emit = (event) => process.stdout.write(JSON.stringify(event) + "\n");

// the loopback listener the authorization server redirects the browser to
let codeArrived;
const code = new Promise((resolve) => { codeArrived = resolve; });
const listener = http.createServer((req, res) => {
  const params = new URL(req.url, "http://127.0.0.1").searchParams;
  res.writeHead(200, { "content-type": "text/plain" });
  res.end(params.get("code") ? "Signed in; you may close this window." : "No code.");
  codeArrived({ code: params.get("code"), error: params.get("error"), state: params.get("state") });
});
await new Promise((resolve) => listener.listen(0, "127.0.0.1", resolve));
const redirectUrl = `http://127.0.0.1:${listener.address().port}/callback`;

class HarnessOAuthProvider {
  constructor() {
    this._client = clientId ? { client_id: clientId } : undefined;
    this._tokens = undefined;
    this._verifier = undefined;
    this._state = undefined;
  }
  get redirectUrl() { return redirectUrl; }
  get clientMetadataUrl() { return clientMetadataUrl; }
  get clientMetadata() {
    return {
      client_name: "IIA Lab TypeScript SDK client", redirect_uris: [redirectUrl],
      grant_types: ["authorization_code", "refresh_token"], response_types: ["code"],
      token_endpoint_auth_method: "none",
    };
  }
  state() {
    this._state = crypto.randomUUID();
    return this._state;
  }
  clientInformation() { return this._client; }
  saveClientInformation(info) {
    this._client = info;
    emit({ event: "registered", client_id: info.client_id });
  }
  tokens() { return this._tokens; }
  saveTokens(tokens) { this._tokens = tokens; }
  redirectToAuthorization(authorizationUrl) {
    emit({ event: "authorize", url: authorizationUrl.href });
  }
  saveCodeVerifier(verifier) { this._verifier = verifier; }
  codeVerifier() { return this._verifier; }
}

const provider = new HarnessOAuthProvider();
const client = new Client({ name: "iia-lab-ts-sdk-client", version: "1.0.0" });
const transport = () => new StreamableHTTPClientTransport(url, { authProvider: provider });

try {
  await client.connect(transport());
} catch (error) {
  if (!(error instanceof UnauthorizedError)) throw error;
  const answer = await code;
  if (!answer.code || answer.state !== provider._state) {
    emit({ event: "login_failed", error: answer.error ?? "state mismatch" });
    process.exit(2);
  }
  const first = transport();
  await first.finishAuth(answer.code);
  await client.connect(first);
}
listener.close();
emit({ event: "connected", client_id: provider._client?.client_id });

const calls = new Map();
const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  const command = JSON.parse(line);
  if (command.op === "list") {
    const { tools } = await client.listTools();
    emit({ event: "tools", tools });
  } else if (command.op === "call") {
    const controller = new AbortController();
    calls.set(command.id, controller);
    const options = { signal: controller.signal };
    if (command.timeout) options.timeout = command.timeout;
    if (command.progress) {
      options.onprogress = (p) => emit({ event: "progress", id: command.id, ...p });
      options.resetTimeoutOnProgress = true;
    }
    emit({ event: "calling", id: command.id });
    client.callTool({ name: command.name, arguments: command.arguments ?? {} }, undefined, options)
      .then((result) => emit({ event: "result", id: command.id, result }))
      .catch((error) => emit({ event: "error", id: command.id, code: error.code ?? null,
                               message: String(error.message ?? error) }));
  } else if (command.op === "cancel") {
    calls.get(command.id)?.abort("cancelled by the user");
  } else if (command.op === "close") {
    break;
  }
}
await client.close();
process.exit(0);
