"""A person at the lab, over HTTP: signed in to the chat route (code + PKCE, as a browser), asking
the agent, reading the console, answering pushes on the phone. The notebooks and their widgets use
it, whether the lab runs in the kernel or in `iia-lab up`."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import httpx

from harness.authenticator import AuthenticatorError, SoftwareAuthenticator, for_origin
from harness.origins import user_facing_url

__all__ = ["DelegationApi", "LabClient", "PhoneApi", "Turn"]


class PhoneApi:
    """The user's Verify app at the simulated Verify, as its phone would use it: pending pushes,
    and answering one with a passkey assertion whose challenge binds that push and answer
    (harness.verify.passkeys.push_challenge), signed by the push's user's passkey in the lab's
    software authenticator (harness.authenticator). There is no unsigned answer.

    `signed` keeps, per push it answered (the last SIGNED_KEPT), what shows the binding and
    nothing private: the answer, the challenge the tenant asked to be signed
    (options.publicKey.challenge), the assertion's clientDataJSON and the tenant's status code
    (harness.verify.passkeys.answer_binding_view decodes it)."""

    SIGNED_KEPT = 32

    def __init__(self, verify_url: str, http: httpx.Client | None = None,
                 authenticator: SoftwareAuthenticator | None = None) -> None:
        self.url = verify_url + "/lab/phone/requests"
        self.origin = user_facing_url(verify_url)  # where the Verify app's pages are
        self._http = http or httpx.Client(timeout=5)
        self._authenticator = authenticator
        self.signed: dict[str, dict[str, Any]] = {}  # push id -> the public parts of its answer

    def pending(self, user: str | None = None) -> list[dict[str, Any]]:
        """Pending pushes, every user's when `user` is None."""
        return self._http.get(self.url, params={"user": user} if user else {}).json()

    def answer(self, push_id: str, approve: bool) -> httpx.Response:
        """Approve or deny: the request options of this push and answer, the assertion of the
        push's user's passkey, the signed answer. Returns the tenant's last response (an error
        body `{error, error_description}` when it refused)."""
        answer = "approve" if approve else "deny"
        options = self._http.post(f"{self.url}/{push_id}/options", json={"answer": answer})
        if options.status_code != 200:
            return options
        public_key = options.json()["publicKey"]
        try:
            signer = self._authenticator or for_origin(self.origin)
            assertion = signer.get(public_key, self.origin)
        except AuthenticatorError as exc:
            return httpx.Response(400, json={"error": "no_passkey", "error_description": str(exc)},
                                  request=options.request)
        response = self._http.post(f"{self.url}/{push_id}/answer",
                                   json={"answer": answer, "credential": assertion})
        self.signed.pop(push_id, None)  # re-insert last: the dict keeps answering order
        self.signed[push_id] = {"answer": answer, "challenge": public_key["challenge"],
                                "clientDataJSON": assertion["response"]["clientDataJSON"],
                                "status": response.status_code}
        while len(self.signed) > self.SIGNED_KEPT:
            del self.signed[next(iter(self.signed))]
        return response

    def enrollment_link(self, user: str) -> httpx.Response:
        """A one-time link to enroll a new device's passkey (a trainer's browser: Touch ID,
        Windows Hello, a phone over hybrid) for `user`, asked for as the Verify app does: the
        user signs in with the passkey they already hold (here the lab's software authenticator)
        and asks for an invitation. Returns the tenant's response ({url, user, expires_in})."""
        base = self.url.removesuffix("/lab/phone/requests")
        started = self._http.post(f"{base}/lab/passkeys/sign-in/options", json={"user": user})
        if started.status_code != 200:
            return started
        try:
            signer = self._authenticator or for_origin(self.origin)
            assertion = signer.get(started.json()["publicKey"], self.origin, user_name=user)
        except AuthenticatorError as exc:
            return httpx.Response(400, json={"error": "no_passkey", "error_description": str(exc)},
                                  request=started.request)
        return self._http.post(f"{base}/lab/enroll/invitations",
                               json={"ceremony": started.json()["ceremony"],
                                     "credential": assertion})


class DelegationApi:
    """The tenant admin's delegation switch at the simulated Verify: who delegated to the agent,
    and withdrawing or restoring one user's delegation (token exchange reads it live)."""

    def __init__(self, verify_url: str, http: httpx.Client | None = None) -> None:
        self.url = verify_url + "/lab/delegations"
        self._http = http or httpx.Client(timeout=5)

    def delegations(self) -> list[dict[str, Any]]:
        """Every user: {user, agent, delegated}."""
        return self._http.get(self.url).json()

    def revoke(self, user: str) -> httpx.Response:
        return self._http.post(f"{self.url}/{quote(user, safe='@')}/revoke")

    def grant(self, user: str) -> httpx.Response:
        return self._http.post(f"{self.url}/{quote(user, safe='@')}/grant")

    def close(self) -> None:
        self._http.close()


def _sse(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    event = None
    for line in response.iter_lines():
        if line.startswith("event:"):
            event = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and event:
            yield event, json.loads(line.split(":", 1)[1])


class Turn:
    """One question to the agent, answered in the background (`result()` waits for it)."""

    def __init__(self) -> None:
        self.text = ""
        self.tools: list[dict[str, Any]] = []
        self.done: dict[str, Any] | None = None
        self._finished = threading.Event()

    def result(self, timeout: float = 180.0) -> dict[str, Any]:
        if not self._finished.wait(timeout):
            raise TimeoutError("the agent did not finish in time (is a push waiting on the phone?)")
        assert self.done is not None
        return {**self.done, "tools": self.tools}


class LabClient:
    def __init__(self, endpoints: dict[str, str], user: str = "alice@example.com") -> None:
        self.endpoints = endpoints
        self.user = user
        self.browser = httpx.Client(base_url=endpoints["chat"], timeout=30)
        self._http = httpx.Client(timeout=10)
        self.phone = PhoneApi(endpoints["verify"], self._http)
        self.sign_in()

    def sign_in(self) -> str:
        response = self.browser.get("/auth/login", params={"login_hint": self.user})
        if response.status_code in (302, 303):  # to the tenant's passkey sign-in, and back
            from harness.verify.login import complete_passkey_login  # signing in only

            response = complete_passkey_login(self.browser, response, self.user)
        while response.status_code in (302, 303):
            response = self.browser.get(response.headers["location"])
        me = self.browser.get("/me").json()
        if not me.get("signed_in"):
            raise RuntimeError(f"could not sign {self.user} in")
        self.session_id: str = me["session_id"]
        return self.session_id

    # -- the agent --------------------------------------------------------------------------

    def ask_async(self, prompt: str, on_text: Callable[[str], None] | None = None,
                  on_tool: Callable[[dict[str, Any]], None] | None = None) -> Turn:
        turn = Turn()

        def run() -> None:
            try:
                with self.browser.stream("POST", "/chat", json={"message": prompt},
                                         timeout=httpx.Timeout(10, read=300)) as response:
                    if response.status_code != 200:
                        body = json.loads(response.read() or b"{}")
                        turn.done = {"stop": body.get("error", "error"),
                                     "text": body.get("error_description", ""), "reason": None}
                        return
                    for kind, data in _sse(response):
                        if kind == "text":
                            turn.text += data["delta"]
                            if on_text:
                                on_text(data["delta"])
                        elif kind == "tool" and data["phase"] == "end":
                            turn.tools.append(data)
                            if on_tool:
                                on_tool(data)
                        elif kind == "done":
                            turn.done = data
                        elif kind == "error":
                            turn.done = {"stop": "error", "text": data.get("error_description"),
                                         "reason": data.get("error")}
            except httpx.HTTPError as exc:
                turn.done = {"stop": "error", "text": str(exc), "reason": exc.__class__.__name__}
            finally:
                if turn.done is None:
                    turn.done = {"stop": "error", "text": "no answer", "reason": None}
                turn._finished.set()

        threading.Thread(target=run, daemon=True, name="lab-chat").start()
        return turn

    def ask(self, prompt: str, timeout: float = 180.0) -> dict[str, Any]:
        return self.ask_async(prompt).result(timeout)

    # -- the console ------------------------------------------------------------------------

    def events(self, after: int = 0, mine: bool = True) -> tuple[list[dict[str, Any]], int]:
        params: dict[str, Any] = {"after": after}
        if mine:
            params["session"] = self.session_id
        body = self._http.get(self.endpoints["console"] + "/events", params=params).json()
        return body["events"], body["next"]

    def calls(self, limit: int = 20) -> list[dict[str, Any]]:
        return self._http.get(self.endpoints["console"] + "/calls",
                              params={"session": self.session_id, "limit": limit}).json()

    def decisions(self, kind: str | None = None) -> list[dict[str, Any]]:
        params = {"kind": kind} if kind else {}
        return self._http.get(self.endpoints["verify"] + "/lab/decisions", params=params).json()

    # -- the phone --------------------------------------------------------------------------

    def pending_pushes(self) -> list[dict[str, Any]]:
        return self.phone.pending(self.user)

    def answer(self, push_id: str, approve: bool) -> dict[str, Any]:
        return self.phone.answer(push_id, approve).json()

    def wait_for_push(self, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pushes = self.pending_pushes()
            if pushes:
                return pushes[0]
            time.sleep(0.1)
        raise TimeoutError("no push arrived")

    def close(self) -> None:
        self.browser.close()
        self._http.close()
