// callhome.js: connect a page to CallHome. No dependencies, no build step.
//
//   var sub = CallHome.connect(iframeUrl, function (info, seq) { ... },
//                              { onError: fn, onStatus: fn });
//   sub.close();
//
// connect() adds a hidden iframe served by CallHome. The iframe waits for news and posts it
// here; only messages from that very iframe (its window and its origin) are accepted.
// onMessage(info, seq) never sees the same seq twice, nor an older one (unless the server
// lost its state and the id was made again, when seqs start over). onError(reason) is called
// at most once, with "unknown" (no such id), "gone" (the id was deleted) or "invalid" (a
// malformed id), and the subscription then ends. Several subscriptions may share a page, and
// the subscriptions of every tab share one connection to CallHome where the browser allows
// (docs/api.md, "One connection per browser"). onStatus(status), if given, hears how:
// {share: "worker" | "locks" | "off", transport: "sse" | "poll", frames: how many CallHome
// frames share the connection, holder: "worker" | "this-tab" | "another-tab"}.
(function (root) {
  "use strict";

  function connect(iframeUrl, onMessage, options) {
    options = options || {};
    var url = new URL(iframeUrl, root.location.href);
    // An id bound to no single origin gets the page's own origin named here.
    if (!url.searchParams.has("origin")) url.searchParams.set("origin", root.location.origin);
    var id = url.searchParams.get("id");
    var frame = root.document.createElement("iframe");
    var lastSeq = 0;
    var closed = false;

    function onPost(event) {
      if (closed || event.source !== frame.contentWindow || event.origin !== url.origin) return;
      var m = event.data;
      if (!m || m.callhome !== 1 || m.id !== id) return;
      if (m.status) {
        if (options.onStatus) options.onStatus(m.status);
        return;
      }
      if (m.error) {
        close();
        if (options.onError) options.onError(m.error);
        return;
      }
      // The id began a new life on the server (its state was lost and the app made it
      // again): its seqs count from zero again.
      if (m.reset === true) {
        lastSeq = 0;
        return;
      }
      if (typeof m.seq !== "number" || m.seq <= lastSeq) return;
      lastSeq = m.seq;
      onMessage(m.info, m.seq);
    }

    function close() {
      if (closed) return;
      closed = true;
      root.removeEventListener("message", onPost);
      if (frame.parentNode) frame.parentNode.removeChild(frame);
    }

    frame.src = url.href;
    frame.title = "CallHome";
    frame.hidden = true;
    frame.tabIndex = -1;
    frame.setAttribute("aria-hidden", "true");
    frame.style.display = "none";
    root.addEventListener("message", onPost);
    (root.document.body || root.document.documentElement).appendChild(frame);
    return { close: close };
  }

  root.CallHome = { connect: connect };
})(window);
