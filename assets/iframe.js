// The CallHome iframe: waits for news on one id and hands it to the parent page.
//
// It runs on the CallHome origin, so its requests need no CORS; the parent learns of values
// only through postMessage to the one origin the id is bound to. It prefers server-sent
// events and falls back to long polling when a stream cannot be opened, or is opened but
// never delivers its first "ready" event (a proxy that buffers). A failed stream is followed
// by one long poll, which also learns whether the id still exists (EventSource cannot see
// HTTP statuses). Retries back off exponentially with jitter, and every (re)connection
// resumes from the last seq seen. A stream or poll the server released (a newer client took
// its waiting place on a full id) is not a failure: it comes back after the server's hint,
// jittered, with its cursor, so nothing notified meanwhile is lost.
(function () {
  "use strict";
  var READY_TIMEOUT_MS = 10000;
  var RELEASED_RETRY_MS = 1000; // the server's `retry:` for a released stream
  var SSE_FAILURES_BEFORE_POLLING = 2;
  var cfg = JSON.parse(document.getElementById("callhome-config").textContent);
  var mode = cfg.transport === "poll" || typeof EventSource !== "function" ? "poll" : "sse";
  var since = 0; // the newest seq seen (the server's cursor after a reset)
  var epoch = 0; // the epoch of `since` (cluster mode; 0: none yet), sent back so a new one is noticed
  var failures = 0; // consecutive failed attempts, for backoff
  var sseFailures = 0; // streams that failed before "ready", since the last good one
  var probeNext = false; // after a failed stream, one long poll learns the id's status
  var stopped = false;
  var source = null;

  function post(message) {
    message.callhome = 1;
    message.id = cfg.id;
    window.parent.postMessage(message, cfg.origin);
  }

  // Tells the parent once why news will not come, then stops for good.
  function stop(error) {
    if (stopped) return;
    stopped = true;
    if (source) source.close();
    post({ error: error });
  }

  function deliver(value) {
    failures = 0;
    // A seq below ours means the id began a new life (the server lost its state and the
    // app made the id again), and a server's `reset` that its count started again (cluster
    // mode: Redis may have lost writes): tell the parent to forget old seqs, then count from
    // zero.
    if (value.reset === true || value.seq < since) {
      post({ reset: true });
      since = 0;
    }
    if (value.seq > since && value.info !== null) post({ seq: value.seq, info: value.info });
    since = value.seq;
    epoch = typeof value.epoch === "number" ? value.epoch : 0;
  }

  // Capped exponential backoff with jitter: 0.25-0.5 s, 0.5-1 s, ... up to 15-30 s.
  function retryLater() {
    var ceiling = Math.min(30000, 500 * Math.pow(2, failures));
    failures += 1;
    setTimeout(connect, ceiling / 2 + Math.random() * (ceiling / 2));
  }

  // Back after between half and all of `ms`: released clients do not all return at once.
  function comeBackAfter(ms) {
    setTimeout(connect, ms / 2 + Math.random() * (ms / 2));
  }

  function connect() {
    if (stopped) return;
    // Shown on the page element for people (and tests) inspecting the frame.
    document.documentElement.setAttribute("data-transport", mode);
    if (mode === "sse" && !probeNext) openStream();
    else poll();
  }

  function query() {
    return (
      "?id=" + encodeURIComponent(cfg.id) + "&since=" + since + "&epoch=" + epoch
    );
  }

  function openStream() {
    var es = new EventSource("events" + query());
    var ready = false;
    var readyTimer = setTimeout(fail, READY_TIMEOUT_MS);
    source = es;

    function fail() {
      if (source !== es) return;
      clearTimeout(readyTimer);
      es.close();
      source = null;
      if (!ready) {
        sseFailures += 1;
        probeNext = true;
        if (cfg.transport !== "sse" && sseFailures >= SSE_FAILURES_BEFORE_POLLING) mode = "poll";
      }
      retryLater();
    }

    es.addEventListener("ready", function () {
      ready = true;
      clearTimeout(readyTimer);
      failures = 0;
      sseFailures = 0;
    });
    es.addEventListener("gone", function () {
      stop("gone");
    });
    es.addEventListener("released", function () {
      if (source !== es) return;
      clearTimeout(readyTimer);
      es.close();
      source = null;
      comeBackAfter(RELEASED_RETRY_MS);
    });
    es.onmessage = function (event) {
      deliver(JSON.parse(event.data));
    };
    // EventSource would reconnect by itself at a fixed pace; we reconnect with backoff.
    es.onerror = fail;
  }

  function poll() {
    fetch("poll" + query(), { cache: "no-store", credentials: "omit" })
      .then(function (response) {
        if (response.status === 404) return stop("unknown");
        if (response.status === 410) return stop("gone");
        if (response.status === 400) return stop("invalid");
        if (response.status !== 200 && response.status !== 204) {
          throw new Error("CallHome poll answered " + response.status);
        }
        probeNext = false;
        // A 204 with Retry-After: released for a newer client; a plain 204: time to ask again.
        var after = response.status === 204 ? Number(response.headers.get("Retry-After")) : 0;
        var next = response.status === 200 ? response.json().then(deliver) : Promise.resolve();
        return next.then(function () {
          failures = 0;
          if (after > 0) comeBackAfter(Math.min(after, 30) * 1000);
          else connect();
        });
      })
      .catch(retryLater);
  }

  if (cfg.error) stop(cfg.error);
  else connect();
})();
