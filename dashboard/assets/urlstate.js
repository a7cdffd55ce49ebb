/* The view's state in the URL, so a link reproduces it and a reload keeps it:
 * ?run=a&run=b&filter=re&smoothing=0.6&x=step&lines=total&view=cockpit&big=id
 * Read once at load (urlRead), written with history.replaceState on every
 * change (urlWrite); runs and the enlarged panel are applied when they exist. */
window.dash_clientside = Object.assign({}, window.dash_clientside, {
  glasscockpit_url: {
    urlRead: function () {
      const gc = window.dash_clientside.glasscockpit;
      const q = new URLSearchParams(window.location.search);
      const no = window.dash_clientside.no_update;
      gc.urlRuns = q.getAll('run');
      gc.pendingBig = q.get('big') || null;
      gc.urlRead = true;
      const num = parseFloat(q.get('smoothing'));
      const pick = function (key, allowed) {
        const v = q.get(key);
        return v !== null && allowed.indexOf(v) >= 0 ? v : no;
      };
      return [
        isNaN(num) ? no : Math.min(Math.max(num, 0), 0.99),
        pick('x', ['step', 'wall', 'relative']),
        pick('lines', ['total', 'layers']),
        pick('view', ['cockpit', 'grid']),
        q.has('filter') ? q.get('filter') : no,
      ];
    },
    urlWrite: function (runs, filter, smoothing, x, lines, view) {
      const gc = window.dash_clientside.glasscockpit;
      if (!gc.urlRead) { return window.dash_clientside.no_update; }
      const q = new URLSearchParams(window.location.search);
      q.delete('run');
      (runs || []).forEach(function (r) { q.append('run', r); });
      if (filter) { q.set('filter', filter); } else { q.delete('filter'); }
      if (smoothing !== undefined && smoothing !== null) { q.set('smoothing', smoothing); }
      if (x) { q.set('x', x); }
      if (lines) { q.set('lines', lines); }
      if (view) { q.set('view', view); }
      if (gc.urlRuns && gc.urlRuns.length && !(runs || []).length) {
        gc.urlRuns.forEach(function (r) { q.append('run', r); });  /* not applied yet */
      }
      window.history.replaceState(null, '', '?' + q.toString());
      return q.toString();
    },
    /* The URL's runs, once the run list holds any of them. */
    urlRuns: function (order) {
      const gc = window.dash_clientside.glasscockpit;
      const want = (gc.urlRuns || []).filter(function (r) { return (order || []).indexOf(r) >= 0; });
      if (!want.length) { return window.dash_clientside.no_update; }
      gc.urlRuns = [];
      return want;
    }
  }
});
(function () {
  /* The enlarged panel: into the URL when it opens or closes, out of it on load. */
  function setBig(name) {
    const q = new URLSearchParams(window.location.search);
    if (name) { q.set('big', name); } else { q.delete('big'); }
    window.history.replaceState(null, '', '?' + q.toString());
  }
  /* Polled (live plots mutate the DOM many times a second; this is cheap). */
  setInterval(function () {
    const gc = (window.dash_clientside || {}).glasscockpit || {};
    const big = document.querySelector('.card-big');
    const name = big ? big.getAttribute('data-panel') : null;
    if (gc.pendingBig) {
      const card = document.querySelector('.card[data-panel="' + CSS.escape(gc.pendingBig) + '"]');
      const gd = card && card.querySelector('.js-plotly-plot');
      if (gd && gd.data && gd.data.length) {
        gc.pendingBig = null;
        const btn = card.querySelector('button[title="enlarge"]');
        if (btn && !card.classList.contains('card-big')) { btn.click(); }
      }
      return;
    }
    if (gc.urlRead && name !== (gc.shownBig || null)) {
      gc.shownBig = name;
      setBig(name);
    }
  }, 250);
})();
