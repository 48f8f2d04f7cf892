"""The user's Verify app (the lab "phone") and passkey enrollment, at `http://localhost:PORT`.

    GET  /lab/phone                         the app: sign in with the passkey, the pending pushes
    POST /lab/phone/session                 {ceremony, credential}: sign in (cookie `verify_app`)
    GET  /lab/phone/me                      the signed-in user, their pending pushes and the
                                            ones the agent withdrew lately (shown withdrawn)
    GET  /lab/phone/requests[?user=EMAIL]   pending pushes (read only: who asks, what, tier, time)
    POST /lab/phone/requests/{id}/options   {answer}: the request options whose challenge binds
                                            this push and this answer (passkeys.push_challenge)
    POST /lab/phone/requests/{id}/answer    {answer, credential}: Approve or Deny, signed
    POST /lab/passkeys/sign-in/options      a sign-in ceremony (challenge) [{user: EMAIL}]
    POST /lab/enroll/invitations            {ceremony, credential}: a signed-in user's one-time
                                            link to enroll another passkey (a new device)
    GET  /lab/enroll?code=...               the enrollment page
    POST /lab/enroll/options | /lab/enroll  {code} | {code, ceremony, credential}

No answer is recorded without an assertion that verifies (relying party: passkeys.py); a refused
one leaves the push as it was. Errors are JSON `{error, error_description}` with a 4xx.
"""

from __future__ import annotations

import html
import json
import secrets
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.routing import Route

from harness.verify.approvals import Approvals, PushRequest
from harness.verify.audit import AuditTrail, Decision
from harness.verify.ciba import Ciba
from harness.verify.directory import Directory
from harness.verify.passkeys import (
    AssertionRequired,
    InvalidAssertion,
    PasskeyError,
    RelyingParty,
    Verified,
    user_facing_url,
)

__all__ = ["Refused", "VerifyApp", "login_page"]

COOKIE = "verify_app"
APP_SESSION_TTL = 3600.0
INVITATION_TTL = 600.0
WITHDRAWN_SHOWN = 300.0  # seconds a withdrawn push stays on the phone, marked withdrawn
PEOPLE_FIELDS = ("target", "user", "member")
GROUP_FIELDS = ("group",)


class Refused(Exception):
    """A request about a push or an invitation the app cannot serve (unknown, answered)."""

    def __init__(self, status: int, error: str, description: str) -> None:
        super().__init__(description)
        self.status, self.error, self.description = status, error, description


def _error(status: int, error: str, description: str) -> JSONResponse:
    return JSONResponse({"error": error, "error_description": description},
                        status_code=status, headers={"Cache-Control": "no-store"})


@dataclass
class _Invitation:
    user_id: str
    expires_at: float


class VerifyApp:
    def __init__(self, *, base_url: str, rp: RelyingParty, approvals: Approvals, ciba: Ciba,
                 directory: Directory, audit: AuditTrail,
                 clock: Callable[[], float] = time.time) -> None:
        self.public_url = user_facing_url(base_url)
        self.rp = rp
        self.approvals = approvals
        self.ciba = ciba
        self.directory = directory
        self.audit = audit
        self._clock = clock
        self._lock = threading.Lock()
        self._sessions: dict[str, tuple[str, float]] = {}
        self._invitations: dict[str, _Invitation] = {}
        # told of every passkey enrolled here (user id): the tenant's SSF transmitter
        self.on_enrolled: Callable[[str], None] | None = None

    # -- what a push shows: people by name and e-mail ------------------------------------------

    def person(self, user_id: str) -> str:
        user = self.directory.user(user_id)
        if user is None:
            return "an unknown user"
        return f"{user.display_name or user.user_name} <{user.user_name}>"

    def view(self, push: PushRequest) -> dict[str, Any]:
        """The push as the app shows it: `public()` plus who asks and the people and groups
        the request names, resolved through the directory (never bare ids)."""
        details = push.authorization_details[0]
        named: dict[str, str] = {}
        for key in PEOPLE_FIELDS:
            if isinstance(details.get(key), str):
                named[key] = self.person(details[key])
        for key in GROUP_FIELDS:
            if isinstance(details.get(key), str):
                group = self.directory.group(details[key])
                named[key] = f"group {group.display_name}" if group else "an unknown group"
        owner = self.directory.user(push.user_id)
        return {**push.public(self._clock()),
                "display_name": owner.display_name if owner else push.email,
                "asks": f"the IIA agent (client {push.client_id})",
                "what": details.get("summary", details["type"]), "names": named,
                "answered_with": push.answered_with, "user_verified": push.user_verified}

    # -- answering a push ------------------------------------------------------------------------

    def _pending(self, approval_id: str) -> PushRequest:
        push = self.approvals.get(approval_id)
        if push is None:
            raise Refused(404, "not_found", f"no push request {approval_id}")
        if push.status != "pending":
            raise Refused(409, "conflict", f"request {approval_id} is already {push.status}")
        return push

    def options(self, approval_id: str, approve: bool) -> dict[str, Any]:
        return self.rp.push_options(self._pending(approval_id), approve)

    def answer(self, approval_id: str, approve: bool,
               credential: Mapping[str, Any] | None) -> PushRequest:
        """Record the user's answer once its assertion verifies (signature, the challenge that
        binds this push and answer, origin, RP ID, UV, counter); raises Refused or
        PasskeyError, the push unchanged."""
        push = self._pending(approval_id)
        verified = self.rp.verify_push_answer(push, approve, credential)
        try:
            answered = self.ciba.answer(push.id, approve, signed=verified)
        except (KeyError, ValueError) as exc:
            raise Refused(409, "conflict", str(exc)) from exc
        self.audit.record(Decision(
            kind="passkey", outcome=answered.status, user=answered.email,
            approval_id=answered.id, tier=answered.tier,
            reason="the user answered the push with a passkey assertion bound to it",
            details={"credentialIdDigest": verified.credential.digest,
                     "userVerified": verified.user_verified}))
        return answered

    # -- the app's sign-in -----------------------------------------------------------------------

    def _app_user(self, request: Request) -> str | None:
        token = request.cookies.get(COOKIE, "")
        with self._lock:
            found = self._sessions.get(token)
        if found is None or found[1] <= self._clock():
            return None
        return found[0]

    def _sign_in(self, body: Mapping[str, Any]) -> Verified:
        return self.rp.sign_in(str(body.get("ceremony", "")), body.get("credential"))

    # -- HTTP ------------------------------------------------------------------------------------

    def _at_public_origin(self, request: Request) -> Response | None:
        """A page a person sees is served at http://localhost:PORT (WebAuthn refuses IPs)."""
        origin = f"{request.url.scheme}://{request.headers.get('host', '')}"
        if origin == self.public_url:
            return None
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(self.public_url + request.url.path + query, status_code=302)

    @staticmethod
    async def _json(request: Request) -> dict[str, Any]:
        try:
            body = await request.json()
        except ValueError as exc:
            raise Refused(400, "invalid_request", "the body is not JSON") from exc
        if not isinstance(body, dict):
            raise Refused(400, "invalid_request", "the body is not a JSON object")
        return body

    @staticmethod
    def _answer_of(body: Mapping[str, Any]) -> bool:
        if body.get("answer") not in ("approve", "deny"):
            raise Refused(400, "invalid_request", "answer is approve or deny")
        return body["answer"] == "approve"

    async def _handle(self, request: Request,
                      run: Callable[[Request], Any]) -> Response:
        try:
            result = await run(request)
        except Refused as exc:
            return _error(exc.status, exc.error, exc.description)
        except PasskeyError as exc:
            return _error(exc.status, exc.error, exc.description)
        return result if isinstance(result, Response) else JSONResponse(
            result, headers={"Cache-Control": "no-store"})

    async def phone_page(self, request: Request) -> Response:
        signed_in = self._app_user(request) is not None  # a reload keeps the phone's session
        return self._at_public_origin(request) or HTMLResponse(
            _page("phone", self.public_url, signed_in=signed_in))

    async def requests(self, request: Request) -> Response:
        user = request.query_params.get("user")
        status = request.query_params.get("status", "pending")
        items = (self.approvals.pending(user) if status == "pending" else
                 [p for p in self.approvals.all() if user is None or p.email == user])
        return JSONResponse([self.view(p) for p in items])

    async def push_options(self, request: Request) -> Response:
        async def run(request: Request) -> Any:
            body = await self._json(request)
            return self.options(request.path_params["approval_id"], self._answer_of(body))
        return await self._handle(request, run)

    async def push_answer(self, request: Request) -> Response:
        async def run(request: Request) -> Any:
            body = await self._json(request)
            credential = body.get("credential")
            if credential is not None and not isinstance(credential, dict):
                raise AssertionRequired("credential is a WebAuthn assertion (JSON object)")
            push = self.answer(request.path_params["approval_id"], self._answer_of(body),
                               credential)
            return self.view(push)
        return await self._handle(request, run)

    async def sign_in_options(self, request: Request) -> Response:
        async def run(request: Request) -> Any:
            body = await self._json(request) if await request.body() else {}
            user_id = None
            if body.get("user"):
                user = self.directory.user_by_username(str(body["user"]))
                if user is None or user.id is None or not user.active:
                    raise Refused(404, "not_found", f"no active user {body['user']}")
                user_id = user.id
            return self.rp.authentication_options(user_id)
        return await self._handle(request, run)

    async def session(self, request: Request) -> Response:
        async def run(request: Request) -> Any:
            verified = self._sign_in(await self._json(request))
            token = secrets.token_urlsafe(24)
            with self._lock:
                self._sessions[token] = (verified.user_id, self._clock() + APP_SESSION_TTL)
            response = JSONResponse({"user": self.person(verified.user_id)})
            response.set_cookie(COOKIE, token, max_age=int(APP_SESSION_TTL), httponly=True,
                                samesite="strict", path="/lab")
            return response
        return await self._handle(request, run)

    async def me(self, request: Request) -> Response:
        user_id = self._app_user(request)
        if user_id is None:
            return _error(401, "login_required", "sign in to the Verify app with your passkey")
        pushes = [self.view(p) for p in self.approvals.pending() if p.user_id == user_id]
        withdrawn = [self.view(p) for p in self.approvals.withdrawn(
            user_id, self._clock() - WITHDRAWN_SHOWN)]
        return JSONResponse({"user": self.person(user_id), "pushes": pushes,
                             "withdrawn": withdrawn},
                            headers={"Cache-Control": "no-store"})

    # -- enrollment --------------------------------------------------------------------------------

    async def invitation(self, request: Request) -> Response:
        """A signed-in user (passkey assertion) asks for a link to enroll a new device."""
        async def run(request: Request) -> Any:
            verified = self._sign_in(await self._json(request))
            code = secrets.token_urlsafe(24)
            with self._lock:
                self._invitations[code] = _Invitation(verified.user_id,
                                                      self._clock() + INVITATION_TTL)
            return {"url": f"{self.public_url}/lab/enroll?code={code}",
                    "user": self.person(verified.user_id), "expires_in": int(INVITATION_TTL)}
        return await self._handle(request, run)

    def _invited(self, code: str, spend: bool) -> str:
        with self._lock:
            found = (self._invitations.pop(code, None) if spend
                     else self._invitations.get(code))
        if found is None or found.expires_at <= self._clock():
            raise InvalidAssertion("the enrollment link is unknown, used or expired: ask for "
                                   "a new one")
        return found.user_id

    async def enroll_page(self, request: Request) -> Response:
        return self._at_public_origin(request) or HTMLResponse(_page("enroll", self.public_url))

    async def enroll_options(self, request: Request) -> Response:
        async def run(request: Request) -> Any:
            body = await self._json(request)
            code = str(body.get("code", ""))
            user = self.directory.user(self._invited(code, spend=False))
            if user is None or user.id is None:
                raise Refused(404, "not_found", "the invited user is gone")
            options = self.rp.registration_options(user.id, user.user_name or "",
                                                   user.display_name or "")
            return {**options, "user": self.person(user.id)}
        return await self._handle(request, run)

    async def enroll(self, request: Request) -> Response:
        async def run(request: Request) -> Any:
            body = await self._json(request)
            user_id = self._invited(str(body.get("code", "")), spend=True)
            credential = body.get("credential")
            if not isinstance(credential, dict):
                raise AssertionRequired("credential is a WebAuthn registration response")
            stored = self.rp.register(str(body.get("ceremony", "")), credential)
            if stored.user_id != user_id:
                raise InvalidAssertion("the registration ceremony was for another user")
            user = self.directory.user(user_id)
            self.audit.record(Decision(kind="passkey", outcome="enrolled",
                                       user=user.user_name if user else None,
                                       details={"credentialIdDigest": stored.digest}))
            if self.on_enrolled is not None:
                self.on_enrolled(user_id)
            return {"enrolled": True, "user": self.person(user_id),
                    "credentialIdDigest": stored.digest}
        return await self._handle(request, run)

    def routes(self) -> list[Route]:
        return [
            Route("/lab/phone", self.phone_page),
            Route("/lab/phone/session", self.session, methods=["POST"]),
            Route("/lab/phone/me", self.me),
            Route("/lab/phone/requests", self.requests),
            Route("/lab/phone/requests/{approval_id}/options", self.push_options,
                  methods=["POST"]),
            Route("/lab/phone/requests/{approval_id}/answer", self.push_answer,
                  methods=["POST"]),
            Route("/lab/passkeys/sign-in/options", self.sign_in_options, methods=["POST"]),
            Route("/lab/enroll/invitations", self.invitation, methods=["POST"]),
            Route("/lab/enroll", self.enroll_page),
            Route("/lab/enroll/options", self.enroll_options, methods=["POST"]),
            Route("/lab/enroll", self.enroll, methods=["POST"]),
        ]


# -- the pages -------------------------------------------------------------------------------------

WEBAUTHN_JS = """
const b64 = s => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/")
  + "===".slice((s.length + 3) % 4)), c => c.charCodeAt(0));
const s64 = b => btoa(String.fromCharCode(...new Uint8Array(b)))
  .replace(/\\+/g, "-").replace(/\\//g, "_").replace(/=+$/, "");
async function passkeyGet(o) {
  const pk = {...o, challenge: b64(o.challenge),
    allowCredentials: (o.allowCredentials || []).map(c => ({...c, id: b64(c.id)}))};
  const c = await navigator.credentials.get({publicKey: pk});
  return {id: c.id, rawId: s64(c.rawId), type: c.type, clientExtensionResults: {},
    authenticatorAttachment: c.authenticatorAttachment,
    response: {clientDataJSON: s64(c.response.clientDataJSON),
      authenticatorData: s64(c.response.authenticatorData),
      signature: s64(c.response.signature),
      userHandle: c.response.userHandle ? s64(c.response.userHandle) : null}};
}
async function passkeyCreate(o) {
  const pk = {...o, challenge: b64(o.challenge), user: {...o.user, id: b64(o.user.id)},
    excludeCredentials: (o.excludeCredentials || []).map(c => ({...c, id: b64(c.id)}))};
  const c = await navigator.credentials.create({publicKey: pk});
  return {id: c.id, rawId: s64(c.rawId), type: c.type, clientExtensionResults: {},
    authenticatorAttachment: c.authenticatorAttachment,
    response: {clientDataJSON: s64(c.response.clientDataJSON),
      attestationObject: s64(c.response.attestationObject),
      transports: c.response.getTransports ? c.response.getTransports() : []}};
}
async function post(url, body) {
  const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                              body: JSON.stringify(body || {})});
  const j = await r.json(); if (!r.ok) throw new Error(j.error + ": " + j.error_description);
  return j;
}
"""

_PHONE_JS = """
const say = t => { document.getElementById("status").textContent = t; };
async function signIn() {
  try {
    const o = await post("/lab/passkeys/sign-in/options");
    const me = await post("/lab/phone/session", {ceremony: o.ceremony,
                                                 credential: await passkeyGet(o.publicKey)});
    signedIn(me.user);
  } catch (e) { say("Sign-in failed: " + e.message); }
}
let watching = null;
function signedIn(user) {
  document.getElementById("who").textContent = "Signed in as " + user;
  say(""); document.getElementById("signin").hidden = true;
  refresh(); if (watching === null) watching = setInterval(refresh, 1000);
}
// a reload keeps the phone's session (its cookie): signed in, the pending pushes listed
if (document.body.dataset.signedIn === "1") (async () => {
  const r = await fetch("/lab/phone/me"); if (r.ok) signedIn((await r.json()).user);
})();
async function answer(id, answer) {
  try {
    const o = await post(`/lab/phone/requests/${id}/options`, {answer});
    const done = await post(`/lab/phone/requests/${id}/answer`,
                            {answer, credential: await passkeyGet(o.publicKey)});
    say(`${done.binding_message}: ${done.status}`); refresh();
  } catch (e) { say("Not answered: " + e.message); }
}
async function refresh() {
  const r = await fetch("/lab/phone/me"); if (!r.ok) return;
  const me = await r.json(), items = me.pushes;
  document.getElementById("empty").hidden = items.length > 0;
  const gone = (me.withdrawn || []).map(item => {
    const card = document.createElement("div");
    card.className = "card withdrawn"; card.dataset.push = item.id;
    for (const [tag, text] of [["h2", item.binding_message], ["p", "Withdrawn: the agent " +
        "cancelled this request. Nothing will be done, and there is nothing to answer."]]) {
      const e = document.createElement(tag); e.textContent = text; card.append(e);
    }
    return card;
  });
  document.getElementById("list").replaceChildren(...gone, ...items.map(item => {
    const card = document.createElement("div");
    card.className = "card tier" + item.tier; card.dataset.push = item.id;
    const badge = document.createElement("span"); badge.className = "tier";
    badge.textContent = item.tier === 3 ? "tier 3 - sensitive: every time" : "tier 2 - write";
    card.append(badge);
    const lines = [["h2", item.binding_message],
      ["p", `${item.asks} asks ${item.display_name} <${item.user}>`],
      ["p", item.what],
      ...Object.entries(item.names).map(([k, v]) => ["p", `${k}: ${v}`])];
    for (const [tag, text] of lines) {
      const e = document.createElement(tag); e.textContent = text; card.append(e);
    }
    const left = document.createElement("p"); left.className = "left";
    left.textContent = `${item.expires_in} s left to answer`; card.append(left);
    const raw = document.createElement("details"), label = document.createElement("summary");
    label.textContent = "What the agent asked for, exactly (authorization_details)";
    const pre = document.createElement("pre");
    pre.textContent = JSON.stringify(item.authorization_details, null, 2);
    raw.append(label, pre); card.append(raw);
    for (const a of ["approve", "deny"]) {
      const b = document.createElement("button"); b.className = a;
      b.textContent = a === "approve" ? "Approve" : "Deny"; b.onclick = () => answer(item.id, a);
      card.append(b);
    }
    return card;
  }));
}
"""

_ENROLL_JS = """
const say = t => { document.getElementById("status").textContent = t; };
async function enroll() {
  try {
    const code = new URLSearchParams(location.search).get("code");
    const o = await post("/lab/enroll/options", {code});
    const done = await post("/lab/enroll", {code, ceremony: o.ceremony,
                                            credential: await passkeyCreate(o.publicKey)});
    say("Passkey enrolled for " + done.user);
  } catch (e) { say("Enrollment failed: " + e.message); }
}
"""

_STYLE = """:root { --ok: #1b7f3b; --bad: #c62828; --wait: #b26a00; --muted: #5f6b7a;
   --line: #dde3ea; --bg: #f5f7fa; --card: #fff; --ink: #17202b; --accent: #0f62fe; --base: 16px; }
 * { box-sizing: border-box; }
 body { font: var(--base)/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
   color: var(--ink); background: var(--bg); }
 header { display: flex; align-items: center; gap: .8rem; padding: .6rem 1rem; background: #0b1d33;
   color: #fff; }
 header h1 { font-size: 1.1rem; margin: 0; flex: 1; }
 header button { color: #fff; background: transparent; border: 1px solid #5b7391;
   border-radius: 4px; padding: .2rem .6rem; font: inherit; font-size: .85rem; margin: 0; }
 main { max-width: 32rem; margin: 0 auto; padding: 1rem; }
 #who { font-weight: 600; } #status { color: var(--muted); min-height: 1.4em; }
 .card { background: var(--card); border: 1px solid var(--line);
   border-left: 6px solid var(--muted); border-radius: 8px; padding: .8rem 1rem; margin: .8rem 0;
   overflow-wrap: anywhere; }
 .card h2 { font-size: 1.05rem; margin: 0 0 .4rem; }
 .card p { margin: .25rem 0; }
 .tier2 { border-left-color: #7a5af8; } .tier3 { border-left-color: var(--wait); }
 .tier { display: inline-block; font-size: .75rem; font-weight: 700; padding: .05rem .5rem;
   border-radius: 999px; color: #fff; background: #7a5af8; }
 .tier3 .tier { background: var(--wait); }
 .left { color: var(--wait); font-weight: 700; }
 button { font: inherit; font-size: 1.1rem; padding: .55rem 1.3rem; margin: .5rem .5rem 0 0;
   border-radius: 8px; border: 1px solid var(--line); cursor: pointer; }
 #signin, #enroll { background: var(--accent); color: #fff; border: 0; }
 .approve { background: var(--ok); color: #fff; border: 0; }
 .deny { background: var(--bad); color: #fff; border: 0; }
 .withdrawn { color: var(--muted); border-left-style: dashed; background: #f0f2f5; }
 details { margin-top: .4rem; font-size: .8rem; color: var(--muted); }
 pre { white-space: pre-wrap; word-break: break-all; font-size: .78rem; background: #f3f5f8;
   padding: .5rem; border-radius: 4px; max-height: 14rem; overflow: auto; }
 body.present { --base: 24px; --muted: #222; --line: #000; --bg: #fff; --ink: #000;
   --ok: #006b1f; --bad: #b00000; }
 body.present header { background: #000; } body.present .card { border-width: 2px; }
 body.present main { max-width: 44rem; }"""

_PRESENT_JS = """
function present(on) {
  document.body.classList.toggle("present", on);
  const b = document.getElementById("present");
  b.setAttribute("aria-pressed", String(on)); b.textContent = on ? "Normal view" : "Presenter mode";
}
document.getElementById("present").onclick =
  () => present(!document.body.classList.contains("present"));
present(new URLSearchParams(location.search).get("present") === "1");
"""


def _page(kind: str, origin: str, *, signed_in: bool = False) -> str:
    if kind == "phone":
        title, body, script = ("IBM Verify (lab phone)",
                               "<button id='signin' onclick='signIn()'>Sign in with a passkey"
                               "</button><p id='status'></p><p id='empty' hidden>No "
                               "pending requests.</p><div id='list'></div>", _PHONE_JS)
    else:
        title, body, script = ("Enroll a passkey - IBM Verify (lab)",
                               "<p>Enroll this device's passkey (Touch ID, Windows Hello, a "
                               "phone).</p><button id='enroll' onclick='enroll()'>Enroll a "
                               "passkey</button><p id='status'></p>", _ENROLL_JS)
    return (f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{title}"
            f"</title><meta name='viewport' content='width=device-width, initial-scale=1'>"
            "<link rel='icon' href='data:,'>"
            f"<style>{_STYLE}</style></head><body data-signed-in='{int(signed_in)}'>"
            f"<header><h1>{html.escape(title)}</h1>"
            "<button id='present' type='button' aria-pressed='false'>Presenter mode</button>"
            f"</header><main><p id='who'></p>{body}</main>"
            f"<script>{WEBAUTHN_JS}{script}{_PRESENT_JS}</script>"
            f"<!-- relying party {html.escape(origin)} --></body></html>")


def login_page(request_json: Mapping[str, Any], hint: str | None) -> str:
    """The authorization endpoint's sign-in page: a passkey assertion for the ceremony in
    `request_json` ({ceremony, publicKey, action, form}), posted back with the request's
    parameters. Scripts read the same JSON from `#passkey-request`."""
    hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                     for k, v in request_json["form"].items())
    who = f" as {html.escape(hint)}" if hint else ""
    data = json.dumps(request_json).replace("</", "<\\/")
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Sign in - IBM "
        f"Verify (lab)</title><link rel='icon' href='data:,'><style>{_STYLE}</style></head>"
        f"<body><header><h1>Sign in{who} - IBM Verify (lab)</h1></header><main>"
        "<p>Sign in with your passkey: this device's (Touch ID, Windows Hello) or your phone's."
        "</p><form method='post' id='login' action='"
        f"{html.escape(request_json['action'])}'>{hidden}"
        f"<input type='hidden' name='passkey_ceremony' value='"
        f"{html.escape(request_json['ceremony'])}'>"
        "<input type='hidden' name='passkey_credential' id='credential'></form>"
        "<button id='signin' onclick='go()'>Sign in with a passkey</button><p id='status'></p>"
        f"<script type='application/json' id='passkey-request'>{data}</script>"
        f"<script>{WEBAUTHN_JS}"
        "async function go() { try {"
        " const r = JSON.parse(document.getElementById('passkey-request').textContent);"
        " document.getElementById('credential').value ="
        "   JSON.stringify(await passkeyGet(r.publicKey));"
        " document.getElementById('login').submit();"
        "} catch (e) { document.getElementById('status').textContent = 'Sign-in failed: ' +"
        " e.message; } }</script></main></body></html>")
