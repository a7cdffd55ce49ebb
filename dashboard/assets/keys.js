/* Page-wide keyboard and pointer habits that need no server round trip:
 * Escape or a click on the backdrop closes an enlarged panel; a card's status
 * line expands on click or Enter (failure reasons are long); Unix times
 * (data-epoch) are shown in the browser's own time zone. */
(function () {
  function closeBig() {
    const big = document.querySelector('.card-big');
    const btn = big && big.querySelector('button[title="enlarge"]');
    if (btn) { btn.click(); return true; }
    return false;
  }
  function toggleStatus(el) {
    el.classList.toggle('card-status-open');
  }
  document.addEventListener('keydown', function (e) {
    if (e.key === 'Escape' && closeBig()) { e.preventDefault(); return; }
    const el = document.activeElement;
    if ((e.key === 'Enter' || e.key === ' ') && el && el.classList &&
        el.classList.contains('card-status')) {
      e.preventDefault();
      toggleStatus(el);
    }
  });
  document.addEventListener('click', function (e) {
    const t = e.target;
    if (document.body.classList.contains('has-big') && t instanceof Element &&
        !t.closest('.card-big')) {
      closeBig();
      return;
    }
    const status = t instanceof Element && t.closest('.card-status');
    if (status) { toggleStatus(status); }
  });
  function localTimes() {
    document.querySelectorAll('.epoch[data-epoch]').forEach(function (el) {
      const epoch = el.getAttribute('data-epoch');
      if (el.getAttribute('data-shown') === epoch) { return; }
      const d = new Date(parseFloat(epoch) * 1000);
      el.setAttribute('data-local', d.toLocaleString());
      el.setAttribute('title', d.toISOString());
      el.setAttribute('data-shown', epoch);
    });
  }
  /* A slow poll, not a MutationObserver: live plots mutate the DOM many times
   * a second, and run details change rarely. */
  setInterval(localTimes, 400);
})();
