// A web-app backend using CallHome from Node.js, with nothing but the built-in fetch.
//
// It creates an id for each page of a shared document, tells all of them about a change in
// one batch notify, and retries safely: every request that changes something carries an
// Idempotency-Key, so a retry after a timeout or a 503 (Redis failing over, in cluster mode)
// gets the first answer instead of notifying twice. Last, it learns whether a notify reached
// a waiting page (`delivery`, and `?wait=`).
//
//   CALLHOME_URL=http://127.0.0.1:8080 CALLHOME_KEY=... node callhome_backend.mjs
//
// Exits 0 when every step did what CallHome documents (docs/api.md), 1 otherwise.

import { randomUUID } from "node:crypto";

const BASE = (process.env.CALLHOME_URL ?? "http://127.0.0.1:8080").replace(/\/$/, "");
const KEY = process.env.CALLHOME_KEY;
const ATTEMPTS = 5;
const sleep = (ms) => new Promise((done) => setTimeout(done, ms));

// One CallHome request, retried on 429, 503 and network errors with the same key.
async function call(method, path, body, idempotencyKey) {
  const headers = { Authorization: `Bearer ${KEY}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  if (idempotencyKey !== undefined) headers["Idempotency-Key"] = idempotencyKey;
  for (let attempt = 0; ; attempt++) {
    let response;
    try {
      response = await fetch(BASE + path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal: AbortSignal.timeout(10_000),
      });
    } catch (error) {
      if (attempt + 1 >= ATTEMPTS) throw error;
      await sleep(200 * 2 ** attempt);
      continue;
    }
    if ((response.status === 429 || response.status === 503) && attempt + 1 < ATTEMPTS) {
      await sleep(Math.min(Number(response.headers.get("Retry-After") ?? "1"), 5) * 1000);
      continue;
    }
    const text = await response.text();
    return { status: response.status, headers: response.headers, body: text ? JSON.parse(text) : null };
  }
}

function check(what, condition) {
  console.log(`${condition ? "ok  " : "FAIL"} ${what}`);
  if (!condition) process.exit(1);
}

const ids = [];
for (let i = 0; i < 3; i++) {
  const created = await call("POST", "/v1/ids", {}, randomUUID());
  check("create answers 201", created.status === 201);
  ids.push(created.body.id);
}

const createKey = randomUUID();
const first = await call("POST", "/v1/ids", {}, createKey);
const again = await call("POST", "/v1/ids", {}, createKey);
check("a retried create gets the same id", again.status === 201 && again.body.id === first.body.id);
check("and says it is a replay", again.headers.get("Idempotent-Replayed") === "true");

const batch = { notifications: ids.map((id) => ({ id, info: "doc:7:rev:12" })) };
const batchKey = randomUUID();
const answer = await call("POST", "/v1/notify", batch, batchKey);
check("the batch answers 200", answer.status === 200);
check("every page notified", answer.body.notified === 3 && answer.body.failed === 0);
check("each with seq 1", answer.body.results.every((r, i) => r.id === ids[i] && r.seq === 1));

const replay = await call("POST", "/v1/notify", batch, batchKey);
check("the retried batch gets the first answer", JSON.stringify(replay.body) === JSON.stringify(answer.body));
check("replayed", replay.headers.get("Idempotent-Replayed") === "true");
for (const id of ids) {
  const state = await call("GET", `/v1/ids/${id}`);
  check(`seq of ${id} is still 1 (notified once)`, state.body.seq === 1);
}

batch.notifications[0].info = "doc:7:rev:13";
const refused = await call("POST", "/v1/notify", batch, batchKey);
check("a reused key is 422", refused.status === 422 && refused.body.error.code === "idempotency_key_reused");

// Did it reach anyone? Nobody polled yet, so the batch stored the values; a page that waits
// (here a long poll standing in for the iframe) is woken, and ?wait= says it got the value.
check("stored for the next poll", answer.body.results.every((r) => r.delivery === "stored"));
const page = ids[0];
const polled = fetch(`${BASE}/v1/poll?id=${page}&since=1`, { signal: AbortSignal.timeout(40_000) })
  .then((r) => r.json());
for (let i = 0; i < 100; i++) { // until the poll is held (at most 5 s)
  if ((await call("GET", `/v1/ids/${page}`)).body.waiting === 1) break;
  await sleep(50);
}
const woke = await call("POST", `/v1/ids/${page}/notify?wait=5s`, { info: "doc:7:rev:14" }, randomUUID());
check("the notify woke the waiting page", woke.status === 200 && woke.body.delivery === "woken");
check("and returned once the page had it", woke.body.delivered === 1 && (await polled).info === "doc:7:rev:14");
let state;
for (let i = 0; i < 60; i++) { // in cluster mode the status is up to a second behind
  state = await call("GET", `/v1/ids/${page}`);
  if (state.body.delivered_seq === woke.body.seq) break;
  await sleep(50);
}
check("the status shows what was delivered", state.body.delivered_seq === woke.body.seq);
console.log("node backend: all steps as documented");
