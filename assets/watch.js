// watch.js: one connection to CallHome for a set of ids (`watch=ID.SEQ.EPOCH,...`).
//
// Used by the iframe (for its own id, or as the tab that holds the connection for every
// frame of the browser) and by the shared worker (assets/worker.js). It prefers server-sent
// events and falls back to long polling when a stream cannot be opened, or is opened but
// never delivers its first "ready" event (a proxy that buffers). A failed stream is followed
// by one long poll, which also learns which ids still exist (EventSource cannot see HTTP
// statuses). Retries back off exponentially with jitter, and every (re)connection resumes
// every id from its cursor, the newest seq seen. Changing the set of ids reopens the
// connection with every cursor, so nothing notified meanwhile is lost. An id released by the
// server (a newer client took its waiting place) comes back after the server's hint.
//
//   var w = new CallHomeWatcher({transport, maxIds, onValue(value), onEnd(id, reason),
//                                onMode(mode)});
//   w.watch(id, seq, epoch); w.unwatch(id); w.size(); w.stop();
//
// onValue gets the server's value object ({id, seq, info, epoch?, reset?}); onEnd(id,
// reason) says an id ended for good: "unknown", "gone" or "invalid".
var CallHomeWatcher = (function () {
  "use strict";
  var READY_TIMEOUT_MS = 10000;
  var RELEASED_RETRY_MS = 1000; // the server's `retry:` for a released id
  var SSE_FAILURES_BEFORE_POLLING = 2;
  var REOPEN_DEBOUNCE_MS = 50; // set changes that come together reopen once

  function Watcher(options) {
    var transport = options.transport || "auto";
    var maxIds = Math.max(1, options.maxIds || 32);
    var mode = transport === "poll" || typeof EventSource !== "function" ? "poll" : "sse";
    var ids = new Map(); // id -> {seq, epoch, got: a value came on this watcher}
    var released = new Set(); // ids left out until the next reopen
    var links = [];
    var failures = 0; // consecutive failed attempts, for backoff
    var sseFailures = 0; // streams that failed before "ready", since the last good one
    var probeNext = false; // after a failed stream, one long poll learns the ids' status
    var timer = null;
    var stopped = false;

    // Opens the links again after `ms`, unless a (re)open is already on its way: that one
    // will carry every id and cursor as they are then.
    function schedule(ms) {
      if (stopped || timer !== null) return;
      timer = setTimeout(function () {
        timer = null;
        open();
      }, ms);
    }

    function open() {
      links.forEach(function (l) {
        l.close();
      });
      links = [];
      released.clear();
      if (stopped || ids.size === 0) return;
      if (options.onMode) options.onMode(mode);
      var all = Array.from(ids.keys());
      for (var i = 0; i < all.length; i += maxIds) links.push(link(all.slice(i, i + maxIds)));
    }

    // Capped exponential backoff with jitter: 0.25-0.5 s, 0.5-1 s, ... up to 15-30 s.
    function retryLater() {
      var ceiling = Math.min(30000, 500 * Math.pow(2, failures));
      failures += 1;
      links.forEach(function (l) {
        l.close();
      });
      links = [];
      schedule(ceiling / 2 + Math.random() * (ceiling / 2));
    }

    function cursors(list) {
      return list
        .map(function (id) {
          var c = ids.get(id);
          return id + "." + c.seq + "." + c.epoch;
        })
        .join(",");
    }

    function received(value) {
      var c = ids.get(value.id);
      if (!c) return;
      failures = 0;
      c.seq = value.seq;
      c.epoch = typeof value.epoch === "number" ? value.epoch : 0;
      c.got = true;
      options.onValue(value);
    }

    function ended(id, reason) {
      if (!ids.delete(id)) return;
      options.onEnd(id, reason);
    }

    // Back after between half and all of the server's hint: released clients do not all
    // return at once.
    function releasedId(id) {
      if (!ids.has(id)) return;
      released.add(id);
      schedule(RELEASED_RETRY_MS / 2 + Math.random() * (RELEASED_RETRY_MS / 2));
    }

    function link(list) {
      var l = { closed: false, close: function () {} };
      if (mode === "sse" && !probeNext) stream(l, list);
      else poll(l, list);
      return l;
    }

    function stream(l, list) {
      var es = new EventSource("events?watch=" + cursors(list));
      var ready = false;
      var readyTimer = setTimeout(fail, READY_TIMEOUT_MS);
      l.close = function () {
        l.closed = true;
        clearTimeout(readyTimer);
        es.close();
      };

      function fail() {
        if (l.closed) return;
        l.close();
        if (!ready) {
          sseFailures += 1;
          probeNext = true;
          if (transport !== "sse" && sseFailures >= SSE_FAILURES_BEFORE_POLLING) mode = "poll";
        }
        retryLater();
      }

      function data(event) {
        return JSON.parse(event.data);
      }

      es.addEventListener("ready", function () {
        ready = true;
        clearTimeout(readyTimer);
        failures = 0;
        sseFailures = 0;
      });
      es.addEventListener("gone", function (event) {
        ended(data(event).id, "gone");
      });
      es.addEventListener("released", function (event) {
        releasedId(data(event).id);
      });
      es.onmessage = function (event) {
        received(data(event));
      };
      // An `event: error` from the server (an id it does not know) arrives here too, as a
      // message event with data; a failed connection is a plain event. EventSource would
      // reconnect by itself at a fixed pace; we reconnect with backoff.
      es.onerror = function (event) {
        if (typeof event.data === "string") {
          var m = data(event);
          ended(m.id, m.error && m.error.code === "unknown_id" ? "unknown" : "invalid");
          return;
        }
        fail();
      };
    }

    function poll(l, list) {
      var abort = typeof AbortController === "function" ? new AbortController() : null;
      l.close = function () {
        l.closed = true;
        if (abort) abort.abort();
      };
      fetch("poll?watch=" + cursors(list), {
        cache: "no-store",
        credentials: "omit",
        signal: abort ? abort.signal : undefined,
      })
        .then(function (response) {
          if (l.closed) return;
          // The whole list refused: an id the server cannot read (the page was served for
          // it, so this is not expected) or more ids than it takes now.
          if (response.status === 400) {
            list.forEach(function (id) {
              ended(id, "invalid");
            });
            return again();
          }
          // 204: the poll timed out, or the server is shutting down; ask again.
          if (response.status === 204) {
            probeNext = false;
            failures = 0;
            return again();
          }
          if (response.status !== 200) throw new Error("CallHome poll answered " + response.status);
          return response.json().then(function (answer) {
            if (l.closed) return;
            probeNext = false;
            failures = 0;
            answer.values.forEach(received);
            answer.ended.forEach(function (e) {
              if (e.reason === "released") releasedId(e.id);
              else ended(e.id, e.reason === "gone" ? "gone" : "unknown");
            });
            again();
          });
        })
        .catch(function () {
          if (!l.closed) retryLater();
        });

      // The next poll of this link, or back to streaming after a probe.
      function again() {
        if (l.closed) return;
        var rest = list.filter(function (id) {
          return ids.has(id) && !released.has(id);
        });
        if (mode === "sse" || rest.length === 0) {
          l.close();
          if (mode === "sse") schedule(0);
          return;
        }
        list = rest;
        poll(l, list);
      }
    }

    // Watches `id` from `seq` (of `epoch`; 0 while none is known). An id already watched
    // keeps its cursor, unless this one is older and no value came yet (a new holder of
    // the connection hears every frame's cursor and must start from the oldest).
    this.watch = function (id, seq, epoch) {
      var c = ids.get(id);
      if (c && (c.got || seq >= c.seq)) return;
      ids.set(id, { seq: seq, epoch: epoch, got: false });
      schedule(REOPEN_DEBOUNCE_MS);
    };

    this.unwatch = function (id) {
      if (ids.delete(id)) schedule(REOPEN_DEBOUNCE_MS);
    };

    this.size = function () {
      return ids.size;
    };

    this.mode = function () {
      return mode;
    };

    this.stop = function () {
      stopped = true;
      if (timer !== null) clearTimeout(timer);
      timer = null;
      links.forEach(function (l) {
        l.close();
      });
      links = [];
    };
  }

  return Watcher;
})();
