// hub.js: one connection for the CallHome frames of a browser, with each frame's news
// routed to it alone.
//
// The hub runs where the connection is held: in the shared worker (assets/worker.js), or in
// the frame elected with Web Locks (assets/iframe.js). Frames subscribe with a token of
// their own, their id and their cursor, and say so again every few seconds; a frame not
// heard from for a while (its tab closed or frozen) is forgotten, and an id no frame wants
// is no longer watched. A frame gets only the values and the end of its own id, and the
// newest value seen when it subscribes (so a new tab of an id already watched is not kept
// waiting for the next notify).
//
//   var hub = new CallHomeHub({transport, maxIds, onStatus(status)});
//   hub.subscribe(token, id, seq, epoch, send); hub.leave(token); hub.prune(ms);
//   hub.status(); hub.stop();
//
// send(message) gets {t: "value", value} or {t: "end", reason}.
var CallHomeHub = (function () {
  "use strict";

  function Hub(options) {
    var frames = new Map(); // token -> {id, send, seen}
    var newest = new Map(); // id -> the newest value seen for it
    var mode = null;
    var watcher = new CallHomeWatcher({
      transport: options.transport,
      maxIds: options.maxIds,
      onValue: function (value) {
        newest.set(value.id, value);
        frames.forEach(function (f) {
          if (f.id === value.id) f.send({ t: "value", value: value });
        });
      },
      onEnd: function (id, reason) {
        newest.delete(id);
        frames.forEach(function (f, token) {
          if (f.id !== id) return;
          frames.delete(token);
          f.send({ t: "end", reason: reason });
        });
        changed();
      },
      onMode: function (m) {
        if (m !== mode) {
          mode = m;
          changed();
        }
      },
    });

    function changed() {
      if (options.onStatus) {
        options.onStatus({ frames: frames.size, ids: watcher.size(), transport: mode });
      }
    }

    function watched(id) {
      var any = false;
      frames.forEach(function (f) {
        if (f.id === id) any = true;
      });
      return any;
    }

    // Also the frame's heartbeat: the same call every few seconds keeps it known.
    this.subscribe = function (token, id, seq, epoch, send) {
      var known = frames.get(token);
      frames.set(token, { id: id, send: send, seen: Date.now() });
      if (known && known.id === id) return;
      if (known && !watched(known.id)) {
        watcher.unwatch(known.id);
        newest.delete(known.id);
      }
      watcher.watch(id, seq, epoch);
      var value = newest.get(id);
      if (value) send({ t: "value", value: value });
      changed();
    };

    this.leave = function (token) {
      var known = frames.get(token);
      if (!known) return;
      frames.delete(token);
      if (!watched(known.id)) {
        watcher.unwatch(known.id);
        newest.delete(known.id);
      }
      changed();
    };

    // Forgets the frames not heard from for `ms`, and returns their tokens.
    this.prune = function (ms) {
      var now = Date.now();
      var self = this;
      var gone = [];
      frames.forEach(function (f, token) {
        if (now - f.seen > ms) gone.push(token);
      });
      gone.forEach(function (token) {
        self.leave(token);
      });
      return gone;
    };

    this.status = function () {
      return { frames: frames.size, ids: watcher.size(), transport: mode };
    };

    this.stop = function () {
      watcher.stop();
      frames.clear();
    };
  }

  return Hub;
})();
