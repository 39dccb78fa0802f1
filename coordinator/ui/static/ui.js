// Captain UI: keeps the pipeline board live and ticks bake countdowns. No framework, no
// third-party code; the server renders every fragment (escaped by html/template).
(function () {
  'use strict';

  function fmt(ms) {
    if (ms <= 0) return '0s';
    var s = Math.round(ms / 1000);
    if (s < 60) return s + 's';
    if (s < 3600) return Math.round(s / 60) + 'm';
    var h = Math.floor(s / 3600), m = Math.floor(s / 60) - 60 * h;
    return m ? h + 'h' + m + 'm' : h + 'h';
  }

  // Countdowns carry the time left when the server drew them; count from when they arrived.
  function tick() {
    var now = Date.now();
    document.querySelectorAll('.countdown').forEach(function (el) {
      if (!el.dataset.t0) el.dataset.t0 = String(now);
      el.textContent = fmt(Number(el.dataset.leftMs) - (now - Number(el.dataset.t0)));
    });
  }
  setInterval(tick, 1000);

  var wrap = document.getElementById('board-wrap');
  if (!wrap) return;
  var url = wrap.dataset.live, state = document.getElementById('live-state');
  var ctl = null, stopped = false, failures = 0;

  function typing() {
    var a = document.activeElement;
    return a && wrap.contains(a) && /^(INPUT|TEXTAREA|SELECT)$/.test(a.tagName);
  }

  function show(ok) {
    if (!state) return;
    state.textContent = ok ? 'live' : 'reconnecting…';
    state.className = ok ? 'live' : 'live off';
  }

  // A long poll: the server answers when the cluster's state moved past the board's index,
  // or after a few seconds, with the board redrawn.
  function poll() {
    if (stopped) return;
    var board = document.getElementById('board');
    var index = board ? board.dataset.index : '0';
    ctl = new AbortController();
    fetch(url + '?index=' + encodeURIComponent(index), {credentials: 'same-origin', signal: ctl.signal, cache: 'no-store'})
      .then(function (r) {
        if (r.status === 401) { stopped = true; location.reload(); return; }
        if (!r.ok) throw new Error('HTTP ' + r.status);
        return r.text().then(function (html) {
          if (!typing()) { wrap.innerHTML = html; tick(); }
          failures = 0;
          show(true);
          setTimeout(poll, 250);
        });
      })
      .catch(function () {
        if (stopped) return;
        failures++;
        show(false);
        setTimeout(poll, Math.min(1000 * failures, 5000));
      });
  }

  window.addEventListener('pagehide', function () { stopped = true; if (ctl) ctl.abort(); });
  poll();
})();
