// The CallHome iframe: waits for news on one id and hands it to the parent page.
//
// It runs on the CallHome origin, so its requests need no CORS; the parent learns of values
// only through postMessage to the one origin the id is bound to, and only of its own id.
// The frames of one browser share one connection for all their ids (`share=auto`, the
// default):
// - through a shared worker (assets/worker.js) where the browser has them;
// - otherwise through the one frame that holds a Web Lock, which holds the connection and
//   relays each frame's news to it alone over a BroadcastChannel; when that tab closes,
//   freezes or is discarded, the lock passes to another frame, which opens the connection
//   again from every frame's cursor;
// - otherwise (or with `share=off`) each frame holds a connection of its own.
// `share=worker` and `share=locks` force one way (or none where the browser lacks it).
// The connection itself is assets/watch.js: SSE, falling back to long polling.
(function () {
  "use strict";
  // How often a frame tells the holder of the connection it is still there. Background tabs
  // may run timers only once a minute, so holders forget a frame only after three minutes
  // of silence; a frame that goes away or freezes says so at once.
  var HEARTBEAT_MS = 5000;
  var FORGET_AFTER_MS = 180000;
  // How often the frame holding the lock says so, and how long followers wait before they
  // take a lock that a hung tab holds (longer than background throttling delays a beat).
  var HOLDER_BEAT_MS = 1000;
  var HOLDER_SILENT_MS = 75000;

  var cfg = JSON.parse(document.getElementById("callhome-config").textContent);
  var token = Math.random().toString(36).slice(2) + Date.now().toString(36);
  var since = 0; // the newest seq seen (the server's cursor after a reset)
  var epoch = 0; // the epoch of `since` (cluster mode; 0: none yet), sent back so a new one is noticed
  var stopped = false;
  var link = null;

  function post(message) {
    message.callhome = 1;
    message.id = cfg.id;
    window.parent.postMessage(message, cfg.origin);
  }

  // Shown on the page element for people (and tests) inspecting the frame.
  function show(name, value) {
    document.documentElement.setAttribute("data-" + name, String(value));
  }

  // Tells the parent once why news will not come, then stops for good.
  function stop(error) {
    if (stopped) return;
    stopped = true;
    if (link) link.close();
    post({ error: error });
  }

  function deliver(value) {
    if (stopped) return;
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

  // What the parent may show: how this frame gets its news, how many frames share the
  // connection, and whether this tab holds it.
  function status(share, s, holder) {
    show("share", share);
    if (s.transport) show("transport", s.transport);
    show("frames", s.frames);
    show("holder", holder);
    post({
      status: { share: share, transport: s.transport, frames: s.frames, holder: holder },
    });
  }

  function subscription() {
    return { t: "sub", token: token, id: cfg.id, seq: since, epoch: epoch };
  }

  // Where this frame's messages from the holder of the connection go.
  function received(message) {
    if (message.t === "value") deliver(message.value);
    else if (message.t === "end") stop(message.reason);
  }

  // A connection of this frame's own.
  function alone() {
    var watcher = new CallHomeWatcher({
      transport: cfg.transport,
      maxIds: 1,
      onValue: deliver,
      onEnd: function (_, reason) {
        stop(reason);
      },
      onMode: function (mode) {
        status("off", { transport: mode, frames: 1 }, "this-tab");
      },
    });
    watcher.watch(cfg.id, since, epoch);
    return { close: watcher.stop };
  }

  function viaWorker() {
    var worker = new SharedWorker(cfg.worker, { name: "callhome:" + cfg.transport });
    var port = worker.port;
    var closed = false;
    var frozen = false; // said goodbye on `freeze`: silent until `resume`
    function sub() {
      if (closed || frozen) return;
      var m = subscription();
      m.transport = cfg.transport;
      m.maxIds = cfg.maxIds;
      port.postMessage(m);
    }
    function bye() {
      port.postMessage({ t: "bye", token: token });
    }
    port.onmessage = function (e) {
      var m = e.data;
      if (m.t === "status") status("worker", m, "worker");
      else received(m);
    };
    // The worker's script failed to load or run: this frame goes alone.
    worker.onerror = function () {
      if (closed || stopped) return;
      close();
      link = alone();
    };
    port.start();
    sub();
    var beat = setInterval(sub, HEARTBEAT_MS);
    window.addEventListener("pagehide", bye);
    document.addEventListener("freeze", function () {
      frozen = true;
      bye();
    });
    document.addEventListener("resume", function () {
      frozen = false;
      sub();
    });
    function close() {
      closed = true;
      clearInterval(beat);
      bye();
    }
    return { close: close };
  }

  function viaLocks() {
    var name = "callhome:" + cfg.transport;
    var channel = new BroadcastChannel(name);
    var hub = null; // while this frame holds the lock
    var release = null; // gives the held lock back
    var pending = null; // our queued request for the lock
    var beatTimer = null;
    var lastBeat = Date.now();
    var frozen = false;
    var closed = false;

    function request(steal) {
      if (closed || frozen || hub !== null || (pending !== null && !steal)) return;
      if (pending !== null) pending.abort();
      var abort = new AbortController();
      pending = abort;
      navigator.locks
        .request(name, steal ? { steal: true } : { signal: abort.signal }, function () {
          if (pending === abort) pending = null;
          if (closed || frozen) return undefined; // given back at once
          return new Promise(function (resolve) {
            release = resolve;
            lead();
          });
        })
        .catch(function () {
          // Our request was aborted, or our lock taken by a frame that thought us hung.
          if (pending === abort) pending = null;
          if (hub !== null) {
            abdicate();
            request(false);
          }
        });
    }

    function lead() {
      hub = new CallHomeHub({
        transport: cfg.transport,
        maxIds: cfg.maxIds,
        onStatus: function (s) {
          status("locks", s, "this-tab");
        },
      });
      var own = subscription();
      hub.subscribe(token, own.id, own.seq, own.epoch, received);
      // Every other frame answers with its subscription and cursor.
      channel.postMessage({ t: "hello", holder: token });
      beatTimer = setInterval(function () {
        hub.prune(FORGET_AFTER_MS);
        var s = hub.status();
        s.t = "beat";
        s.holder = token;
        channel.postMessage(s);
      }, HOLDER_BEAT_MS);
    }

    function abdicate() {
      if (hub === null) return;
      clearInterval(beatTimer);
      hub.stop();
      hub = null;
      if (release !== null) release();
      release = null;
    }

    channel.onmessage = function (e) {
      var m = e.data;
      if (!m || typeof m.t !== "string") return;
      // A frame that said goodbye stays out until it resumes, even if a message reaches it:
      // answering a new holder's hello would have it watched with nobody to leave for it.
      if (closed || frozen) return;
      if (hub !== null) {
        if (m.t === "sub" && typeof m.token === "string" && typeof m.id === "string") {
          var to = m.token;
          hub.subscribe(to, m.id, Number(m.seq) || 0, Number(m.epoch) || 0, function (out) {
            out.to = to;
            channel.postMessage(out);
          });
        } else if (m.t === "bye" && typeof m.token === "string") {
          hub.leave(m.token);
        }
        return;
      }
      if (m.t === "hello") {
        lastBeat = Date.now();
        channel.postMessage(subscription());
      } else if (m.t === "beat") {
        lastBeat = Date.now();
        status("locks", m, "another-tab");
      } else if (m.to === token) {
        received(m);
      }
    };

    function sub() {
      if (closed || frozen) return;
      if (hub !== null) return;
      channel.postMessage(subscription());
      // A holder silent for this long is hung, not throttled: take the lock from it.
      if (Date.now() - lastBeat > HOLDER_SILENT_MS) {
        lastBeat = Date.now();
        request(true);
      }
    }

    function bye() {
      if (hub !== null) abdicate();
      else channel.postMessage({ t: "bye", token: token });
      if (pending !== null) pending.abort();
    }

    // A frozen tab runs nothing: it gives its lock (and its place in the queue for it) back
    // first, and asks again when it resumes.
    document.addEventListener("freeze", function () {
      frozen = true;
      bye();
    });
    document.addEventListener("resume", function () {
      frozen = false;
      lastBeat = Date.now();
      sub();
      request(false);
    });
    window.addEventListener("pagehide", bye);

    show("share", "locks");
    channel.postMessage(subscription());
    request(false);
    var beat = setInterval(sub, HEARTBEAT_MS);
    return {
      close: function () {
        closed = true;
        clearInterval(beat);
        bye();
        channel.close();
      },
    };
  }

  function connect() {
    var share = cfg.share;
    if ((share === "auto" || share === "worker") && typeof SharedWorker === "function") {
      try {
        return viaWorker();
      } catch (e) {
        // A browser that refuses shared workers here (storage blocked, say).
      }
    }
    var locks = typeof navigator.locks === "object" && typeof BroadcastChannel === "function";
    if ((share === "auto" || share === "locks") && locks) return viaLocks();
    return alone();
  }

  if (cfg.error) stop(cfg.error);
  else link = connect();
})();
