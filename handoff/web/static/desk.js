// Web agent desk. Plain JS under a strict CSP (no inline script, no eval). The pages work
// without it; it adds: a queue refresh every 10 s, a keep-alive while the agent is busy on
// a page, and a sign-out after idle_minutes without use. The server enforces idle anyway.
'use strict';

(() => {
  const POLL_MS = 10000;
  const body = document.body;
  const idleMs = Number(body.dataset.idleSeconds || 0) * 1000;
  const signout = document.getElementById('signout-form');
  if (!signout || !idleMs) return; // not signed in

  let lastActivity = Date.now();
  let activeSincePoll = false;
  const mark = () => { lastActivity = Date.now(); activeSincePoll = true; };
  for (const type of ['keydown', 'pointerdown', 'input', 'wheel', 'touchstart']) {
    window.addEventListener(type, mark, { capture: true, passive: true });
  }

  const toSignin = () => {
    location.assign('/agent/signin?notice=expired&next=' + encodeURIComponent(location.pathname));
  };

  // Fresh queues replace the old ones, unless the agent is using them (focus inside).
  function swapQueues(html) {
    const fresh = new DOMParser().parseFromString(html, 'text/html').getElementById('queues');
    const current = document.getElementById('queues');
    if (!fresh || !current || current.contains(document.activeElement)) return;
    current.replaceWith(document.adoptNode(fresh));
  }

  async function tick() {
    if (Date.now() - lastActivity >= idleMs) {
      signout.elements.reason.value = 'idle';
      signout.submit();
      return;
    }
    // "active" counts as use on the server (the idle limit starts again); "passive" does not.
    const headers = { 'X-Desk-Poll': activeSincePoll ? 'active' : 'passive' };
    activeSincePoll = false;
    const queues = body.dataset.poll === 'queues';
    try {
      const res = await fetch(queues ? '/agent/' : '/agent/api/ping',
        { headers, cache: 'no-store', credentials: 'same-origin', redirect: 'manual' });
      if (res.status === 401 || res.type === 'opaqueredirect') return toSignin();
      if (queues && res.ok) swapQueues(await res.text());
    } catch (_) {
      // Offline for a moment: try again at the next tick.
    }
  }

  setInterval(tick, POLL_MS);
})();
