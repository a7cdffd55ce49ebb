/* "sync zoom": a zoom or pan of one line panel's x axis (or a double-click
 * back to autorange) is applied to every other panel with the same kind of x
 * axis (step, relative or wall time). Histogram panels keep their own axes. */
(function () {
  let applying = false;
  function on() {
    const box = document.querySelector('#sync-x input[value=sync]');
    return box && box.checked;
  }
  function plots() {
    return [...document.querySelectorAll('.card .js-plotly-plot')].filter(function (gd) {
      return gd.data && gd.data.some(function (t) {
        return t.type === 'scatter' && t.mode && t.mode.indexOf('lines') >= 0;
      });
    });
  }
  function follow(source, ev) {
    if (applying || !on()) { return; }
    let update = null;
    if ('xaxis.range[0]' in ev && 'xaxis.range[1]' in ev) {
      update = {'xaxis.range': [ev['xaxis.range[0]'], ev['xaxis.range[1]']]};
    } else if (ev['xaxis.range']) {
      update = {'xaxis.range': ev['xaxis.range']};
    } else if (ev['xaxis.autorange']) {
      update = {'xaxis.autorange': true};
    }
    if (!update) { return; }
    const kind = source._fullLayout.xaxis.type;
    const want = update['xaxis.range'];
    applying = true;
    plots().forEach(function (gd) {
      if (gd === source || !gd._fullLayout || gd._fullLayout.xaxis.type !== kind) {
        return;
      }
      /* Already there (a follower's own relayout event comes back here):
       * skip, or the panels would echo each other forever. */
      const axis = gd._fullLayout.xaxis;
      if (want && axis.range && String(axis.range[0]) === String(want[0]) &&
          String(axis.range[1]) === String(want[1])) { return; }
      if (!want && gd.layout.xaxis && gd.layout.xaxis.autorange === true) { return; }
      window.Plotly.relayout(gd, update);
    });
    applying = false;
  }
  setInterval(function () {
    document.querySelectorAll('.card .js-plotly-plot').forEach(function (gd) {
      if (gd.on && !gd._gcSync) {
        gd._gcSync = true;
        gd.on('plotly_relayout', function (ev) { follow(gd, ev || {}); });
      }
    });
  }, 500);
})();
