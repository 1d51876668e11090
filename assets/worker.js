// worker.js: the shared worker that holds one connection to CallHome for every CallHome
// frame of a browser (of one top-level site: browsers partition shared workers by it).
//
// Each frame connects a port and sends {t: "sub", token, id, seq, epoch, transport, maxIds}
// at once and every few seconds after, and {t: "bye", token} when its page goes away. The
// worker answers on that port alone: {t: "value", value}, {t: "end", reason}, and
// {t: "status", frames, ids, transport, holder} (how many frames share the connection).
(function () {
  "use strict";
  // A frame says it is there every 5 s, but a background tab may run timers only once a
  // minute; a frame that closes or freezes says goodbye at once. So a frame silent for three
  // minutes is gone without a word (its tab crashed).
  var FORGET_AFTER_MS = 180000;
  var hub = null;
  var ports = new Map(); // token -> the port of that frame
  var statusTimer = null;

  // Every frame hears how many share the connection, at most every 20 ms.
  function status() {
    if (statusTimer !== null) return;
    statusTimer = setTimeout(function () {
      statusTimer = null;
      var s = hub.status();
      s.t = "status";
      s.holder = "worker";
      ports.forEach(function (port) {
        port.postMessage(s);
      });
    }, 20);
  }

  function forget(token) {
    ports.delete(token);
    if (hub !== null) hub.leave(token);
  }

  // The first frame's settings hold for the worker's life: the worker's name carries the
  // transport, and every frame of one daemon has the same maxIds.
  function start(first) {
    hub = new CallHomeHub({ transport: first.transport, maxIds: first.maxIds, onStatus: status });
    setInterval(function () {
      hub.prune(FORGET_AFTER_MS).forEach(function (token) {
        ports.delete(token);
      });
    }, 10000);
  }

  self.onconnect = function (event) {
    var port = event.ports[0];
    port.onmessage = function (e) {
      var m = e.data;
      if (!m || typeof m.token !== "string") return;
      if (m.t === "sub" && typeof m.id === "string") {
        if (hub === null) start(m);
        var token = m.token;
        ports.set(token, port);
        hub.subscribe(token, m.id, Number(m.seq) || 0, Number(m.epoch) || 0, function (out) {
          if (out.t === "end") ports.delete(token);
          port.postMessage(out);
        });
      } else if (m.t === "bye") {
        forget(m.token);
      }
    };
    port.start();
  };
})();
