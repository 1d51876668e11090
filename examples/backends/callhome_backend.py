#!/usr/bin/env python3
"""A web-app backend using CallHome, with nothing but Python's standard library.

The original proposal's case: an App Engine style backend that cannot hold browser
connections itself. It creates an id for each page (here: three pages of one chat room),
tells all of them about a new message in one batch notify, and retries safely: every
request that changes something carries an Idempotency-Key, so a retry after a timeout or a
503 (Redis failing over, in cluster mode) gets the first answer instead of notifying twice.
Last, it learns whether a notify reached a waiting page (`delivery`, and `?wait=`).

    CALLHOME_URL=http://127.0.0.1:8080 CALLHOME_KEY=... python3 callhome_backend.py

Exits 0 when every step did what CallHome documents (docs/api.md), 1 otherwise.
"""

import json
import os
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid

BASE = os.environ.get("CALLHOME_URL", "http://127.0.0.1:8080").rstrip("/")
KEY = os.environ["CALLHOME_KEY"]
# Retries of one request: 503 and 429 say when to come back (Retry-After); a timeout or a
# dropped connection does not, so those wait a short, growing while.
ATTEMPTS = 5


def call(method, path, body=None, idempotency_key=None):
    """One CallHome request, retried on 429, 503 and network errors with the same
    Idempotency-Key. Returns (status, headers, JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"Authorization": "Bearer " + KEY}
    if data is not None:
        headers["Content-Type"] = "application/json"
    if idempotency_key is not None:
        headers["Idempotency-Key"] = idempotency_key
    for attempt in range(ATTEMPTS):
        request = urllib.request.Request(BASE + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read()
                return response.status, response.headers, json.loads(text) if text else None
        except urllib.error.HTTPError as e:
            text = e.read()
            if e.code in (429, 503) and attempt + 1 < ATTEMPTS:
                time.sleep(min(float(e.headers.get("Retry-After", "1")), 5))
                continue
            return e.code, e.headers, json.loads(text) if text else None
        except (urllib.error.URLError, TimeoutError, ConnectionError):
            if attempt + 1 == ATTEMPTS:
                raise
            time.sleep(0.2 * 2**attempt)
    raise RuntimeError("unreachable")


def check(what, condition):
    print(("ok   " if condition else "FAIL ") + what)
    if not condition:
        sys.exit(1)


def main():
    # 1. One id per page view, each create retry-safe with its own key.
    ids = []
    for _ in range(3):
        status, _, created = call("POST", "/v1/ids", {}, idempotency_key=str(uuid.uuid4()))
        check("create answers 201", status == 201)
        ids.append(created["id"])

    # A create retried with the same key gets the same id, not a second one.
    key = str(uuid.uuid4())
    _, _, first = call("POST", "/v1/ids", {}, idempotency_key=key)
    status, headers, again = call("POST", "/v1/ids", {}, idempotency_key=key)
    check("a retried create gets the same id", status == 201 and again["id"] == first["id"])
    check("and says it is a replay", headers.get("Idempotent-Replayed") == "true")

    # 2. A new message in the room: one batch notify for every page.
    batch = {"notifications": [{"id": i, "info": "room:1:msg:42"} for i in ids]}
    batch["notifications"].append({"id": "no-such-id-0123456789", "info": "x"})
    key = str(uuid.uuid4())
    status, _, answer = call("POST", "/v1/notify", batch, idempotency_key=key)
    check("the batch answers 200", status == 200)
    check("every page notified", answer["notified"] == 3 and answer["failed"] == 1)
    check("each result in order", [r["id"] for r in answer["results"]] == ids + ["no-such-id-0123456789"])
    check("a bad id fails alone", answer["results"][3]["error"]["code"] == "unknown_id")

    # 3. The answer was "lost": the retry with the same key changes nothing.
    status, headers, replay = call("POST", "/v1/notify", batch, idempotency_key=key)
    check("the retried batch gets the first answer", status == 200 and replay == answer)
    check("replayed", headers.get("Idempotent-Replayed") == "true")
    for i in ids:
        _, _, state = call("GET", "/v1/ids/" + i)
        check("seq %s is still 1 (notified once)" % i, state["seq"] == 1)

    # 4. The same key with another request is refused, not applied.
    batch["notifications"][0]["info"] = "room:1:msg:43"
    status, _, refused = call("POST", "/v1/notify", batch, idempotency_key=key)
    check("a reused key is 422", status == 422 and refused["error"]["code"] == "idempotency_key_reused")

    # 5. Did it reach anyone? Nobody polled yet, so the batch stored the values; a page that
    # waits (here a thread standing in for the iframe) is woken, and ?wait= says it got it.
    check("stored for the next poll", all(r["delivery"] == "stored" for r in answer["results"][:3]))
    page = ids[0]
    polled = {}
    waiter = threading.Thread(target=lambda: polled.update(poll(page, since=1)))
    waiter.start()
    for _ in range(100):  # until the poll is held (at most 5 s)
        if call("GET", "/v1/ids/" + page)[2]["waiting"] == 1:
            break
        time.sleep(0.05)
    status, _, woke = call("POST", "/v1/ids/%s/notify?wait=5s" % page, {"info": "room:1:msg:44"},
                           idempotency_key=str(uuid.uuid4()))
    waiter.join(10)
    check("the notify woke the waiting page", status == 200 and woke["delivery"] == "woken")
    check("and returned once the page had it", woke["delivered"] == 1 and polled.get("info") == "room:1:msg:44")
    for _ in range(60):  # in cluster mode the status is up to a second behind
        _, _, state = call("GET", "/v1/ids/" + page)
        if state["delivered_seq"] == woke["seq"]:
            break
        time.sleep(0.05)
    check("the status shows what was delivered", state["delivered_seq"] == woke["seq"])
    print("python backend: all steps as documented")


def poll(id, since):
    """A long poll, as the page's iframe makes it (no key: the id is the capability)."""
    url = "%s/v1/poll?id=%s&since=%d" % (BASE, id, since)
    with urllib.request.urlopen(url, timeout=40) as response:
        return json.loads(response.read())


if __name__ == "__main__":
    main()
