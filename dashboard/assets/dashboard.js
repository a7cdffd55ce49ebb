/* Browser-side callbacks: visibility, log-y toggle, enlarge, image download.
 * These only touch the plot in the page (Plotly.relayout / downloadImage), so
 * they answer instantly and never redraw data. */
window.dash_clientside = Object.assign({}, window.dash_clientside, {
  glasscockpit: {
    /* Names of the panels on or near the screen; the server updates only these.
     * Also the gate that keeps ticks from overlapping: Dash drops the answer of
     * a request overtaken by a newer one, so a tick slower than the interval
     * would otherwise never land. A new tick starts only when the last one
     * answered (tickDone) or after 10 s; a control moved or a grid rebuilt
     * while one is pending is picked up by the next interval. */
    visible: function (n, gridState) {
      const gc = window.dash_clientside.glasscockpit;
      if (gc.pending && Date.now() - gc.pending < 10000) {
        return window.dash_clientside.no_update;
      }
      gc.pending = Date.now();
      const margin = window.innerHeight * 0.25;
      const out = [];
      const traces = {};
      document.querySelectorAll('.card[data-panel]').forEach(function (card) {
        const r = card.getBoundingClientRect();
        if (r.height > 0 && r.bottom > -margin && r.top < window.innerHeight + margin) {
          const name = card.getAttribute('data-panel');
          out.push(name);
          /* How many traces the plot holds: the server redraws a panel whose
           * plot does not match what it last sent. */
          const gd = card.querySelector('.js-plotly-plot');
          traces[name] = gd && gd.data ? gd.data.length : 0;
        }
      });
      return {n: n, ids: out, traces: traces, t: Date.now()};
    },
    /* The cockpit view (every panel on one screen) or the long grid: only
     * CSS changes (assets/cockpit.css); plots then fit their new boxes. */
    view: function (value) {
      document.body.classList.toggle('view-cockpit', value !== 'grid');
      setTimeout(function () { window.dispatchEvent(new Event('resize')); }, 30);
      return value === 'grid' ? 'grid-groups' : 'grid-groups view-cockpit';
    },
    /* The system's colour scheme, now and whenever it changes (the figures are
     * then redrawn in it; the page's colours follow by CSS). */
    theme: function () {
      const mq = window.matchMedia('(prefers-color-scheme: dark)');
      if (!mq._gcWatched) {
        mq._gcWatched = true;
        mq.addEventListener('change', function (e) {
          window.dash_clientside.set_props('theme', {data: e.matches ? 'dark' : 'light'});
        });
      }
      return mq.matches ? 'dark' : 'light';
    },
    tickDone: function () {
      window.dash_clientside.glasscockpit.pending = 0;
      return window.dash_clientside.no_update;
    },
    graphOf: function (name) {
      const card = document.querySelector('.card[data-panel="' + CSS.escape(name) + '"]');
      return card && card.querySelector('.js-plotly-plot');
    },
    toggleLog: function (n, isLog) {
      if (!n) { return [window.dash_clientside.no_update, window.dash_clientside.no_update]; }
      const name = window.dash_clientside.callback_context.triggered_id.name;
      const next = !isLog;
      const gd = window.dash_clientside.glasscockpit.graphOf(name);
      if (gd && window.Plotly) {
        /* Histogram panels switch their count axes (data-log-axis), lines y. */
        const card = gd.closest('.card');
        const axes = ((card && card.getAttribute('data-log-axis')) || 'yaxis').split(' ');
        const update = {};
        axes.forEach(function (a) {
          update[a + '.type'] = next ? 'log' : 'linear';
          update[a + '.autorange'] = true;
        });
        window.Plotly.relayout(gd, update);
      }
      return [next, next ? 'btn btn-on' : 'btn'];
    },
    enlarge: function (n) {
      if (!n) { return window.dash_clientside.no_update; }
      const big = n % 2 === 1;
      document.body.classList.toggle('has-big', big);
      /* The enlarged panel has room for every line's name: a legend at the
       * right; back in the grid, the card's own choice returns. */
      const name = window.dash_clientside.callback_context.triggered_id.name;
      const gd = window.dash_clientside.glasscockpit.graphOf(name);
      if (gd && window.Plotly && gd.layout) {
        if (big) {
          gd._gcLegend = {showlegend: gd.layout.showlegend, legend: gd.layout.legend};
          window.Plotly.relayout(gd, {showlegend: true,
            legend: {orientation: 'v', x: 1.02, y: 1, xanchor: 'left', yanchor: 'top',
                     font: {size: 11}}});
        } else if (gd._gcLegend) {
          window.Plotly.relayout(gd, {showlegend: gd._gcLegend.showlegend,
            legend: gd._gcLegend.legend || {}});
        }
      }
      setTimeout(function () { window.dispatchEvent(new Event('resize')); }, 50);
      return big ? 'card card-big' : 'card';
    },
    png: function (n) {
      if (!n) { return window.dash_clientside.no_update; }
      const name = window.dash_clientside.callback_context.triggered_id.name;
      const gd = window.dash_clientside.glasscockpit.graphOf(name);
      if (gd && window.Plotly) {
        window.Plotly.downloadImage(gd, {format: 'png', scale: 2,
          filename: name.replace(/[^A-Za-z0-9_-]/g, '_'),
          width: gd._fullLayout.width, height: gd._fullLayout.height});
      }
      return window.dash_clientside.no_update;
    }
  }
});
