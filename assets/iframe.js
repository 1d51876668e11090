// The CallHome iframe: waits for news on one id and hands it to the parent page.
// It runs on the CallHome origin, so its requests need no CORS; the parent learns of values
// only through postMessage to the one origin the id is bound to.
(function () {
  "use strict";
  var cfg = JSON.parse(document.getElementById("callhome-config").textContent);
  var since = 0;
  var failures = 0;
  var stopped = false;

  function post(message) {
    message.callhome = 1;
    message.id = cfg.id;
    window.parent.postMessage(message, cfg.origin);
  }

  // Tells the parent once why news will not come, then stops for good.
  function stop(error) {
    if (stopped) return;
    stopped = true;
    post({ error: error });
  }

  // Capped exponential backoff with full jitter: 0.5 s, 1 s, 2 s ... up to 30 s.
  function retryLater() {
    var ceiling = Math.min(30000, 500 * Math.pow(2, failures));
    failures += 1;
    setTimeout(poll, ceiling / 2 + Math.random() * ceiling / 2);
  }

  function poll() {
    if (stopped) return;
    var url = "poll?id=" + encodeURIComponent(cfg.id) + "&since=" + since;
    fetch(url, { cache: "no-store", credentials: "omit" })
      .then(function (response) {
        if (response.status === 200) {
          return response.json().then(function (value) {
            failures = 0;
            // A seq below ours means the id began a new life (a restart without its
            // state): take the server's cursor and wait from there.
            if (value.seq > since && value.info !== null) post({ seq: value.seq, info: value.info });
            since = value.seq;
            poll();
          });
        }
        if (response.status === 204) {
          failures = 0;
          return poll();
        }
        if (response.status === 404) return stop("unknown");
        if (response.status === 410) return stop("gone");
        throw new Error("CallHome poll answered " + response.status);
      })
      .catch(retryLater);
  }

  if (cfg.error) stop(cfg.error);
  else poll();
})();
