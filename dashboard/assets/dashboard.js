/* Browser-side callbacks: visibility, log-y toggle, enlarge, image download.
 * These only touch the plot in the page (Plotly.relayout / downloadImage), so
 * they answer instantly and never redraw data. */
window.dash_clientside = Object.assign({}, window.dash_clientside, {
  glasscockpit: {
    /* Names of the panels on or near the screen; the server updates only these. */
    visible: function (n) {
      const margin = window.innerHeight * 0.5;
      const out = [];
      document.querySelectorAll('.card[data-panel]').forEach(function (card) {
        const r = card.getBoundingClientRect();
        if (r.height > 0 && r.bottom > -margin && r.top < window.innerHeight + margin) {
          out.push(card.getAttribute('data-panel'));
        }
      });
      return {n: n, ids: out, t: Date.now()};
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
        window.Plotly.relayout(gd, {'yaxis.type': next ? 'log' : 'linear', 'yaxis.autorange': true});
      }
      return [next, next ? 'btn btn-on' : 'btn'];
    },
    enlarge: function (n) {
      if (!n) { return window.dash_clientside.no_update; }
      const big = n % 2 === 1;
      document.body.classList.toggle('has-big', big);
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
