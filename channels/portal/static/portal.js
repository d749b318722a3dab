// Patient portal web chat. Plain JS, no dependencies; served under a strict CSP
// (no inline script/style, no eval). Message text is only ever inserted as text
// nodes / textContent, never as HTML.
'use strict';

(() => {
  const MAX_LEN = 2000;
  const TOKEN_KEY = 'patientbot.portal.token';
  const NAME_KEY = 'patientbot.portal.display_name';
  // The sign-in welcome opens a conversation that was empty at sign-in, and stays at the top
  // of it whenever the history is re-rendered (e.g. after a reload).
  const WELCOME_KEY = 'patientbot.portal.welcome';
  const ENDED = 'Your session has ended. Please sign in again.';
  const TOO_LONG = 'Your message is too long. The limit is ' + MAX_LEN + ' characters.';

  const $ = (id) => document.getElementById(id);
  const el = {
    signin: $('signin'), signinForm: $('signin-form'), name: $('name'), dob: $('dob'),
    signinButton: $('signin-button'), signinError: $('signin-error'), signinNotice: $('signin-notice'),
    chat: $('chat'), log: $('log'), compose: $('compose'), message: $('message'), counter: $('counter'),
    signoutButton: $('signout-button'), chatError: $('chat-error'), whoami: $('whoami'),
  };

  let token = sessionStorage.getItem(TOKEN_KEY);
  let cursor = 0;
  let generation = 0; // bumped on sign-in/sign-out so async work from an old session stops
  let streamAbort = null;
  let sendChain = Promise.resolve(); // sends are chained so messages arrive in the order typed
  // The last message that failed on the network. Sending the same text again reuses its
  // client_message_id (the server dedupes), so a request that did land is not doubled.
  let retry = null;
  // The welcome from the latest sign-in, until the first history load decides whether it is shown.
  let pendingWelcome = null;

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const setText = (node, text) => { node.textContent = text || ''; };

  function api(method, path, body, opts = {}) {
    const headers = { Accept: opts.accept || 'application/json' };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    if (token) headers.Authorization = 'Bearer ' + token;
    const init = { method, headers, cache: 'no-store', credentials: 'same-origin', signal: opts.signal };
    if (body !== undefined) init.body = JSON.stringify(body);
    return fetch(path, init);
  }

  // Prefer the server's own error text; fall back when the body is not usable JSON.
  async function errorText(res, fallback) {
    const data = await res.json().catch(() => null);
    return data && typeof data.error === 'string' && data.error.trim() ? data.error : fallback;
  }

  // Speaker labels and status are CSS generated content, so textContent is exactly the message.
  function makeMsg(direction, text, status, at) {
    const node = document.createElement('div');
    node.className = 'msg ' + (direction === 'in' ? 'msg-in' : 'msg-out');
    node.appendChild(document.createTextNode(String(text ?? '')));
    if (direction === 'in') node.dataset.status = status || 'sent';
    const when = at ? new Date(at) : null;
    if (when && !isNaN(when)) node.title = when.toLocaleString();
    return node;
  }

  // The welcome looks like a support line but is local: no direction, status or cursor, and
  // not a .msg-out, so it is never counted or re-delivered as a reply.
  function makeWelcome(text) {
    const node = document.createElement('div');
    node.className = 'msg msg-welcome';
    node.appendChild(document.createTextNode(text));
    return node;
  }

  function appendMsg(direction, text, status, at) {
    const node = el.log.appendChild(makeMsg(direction, text, status, at));
    el.log.scrollTop = el.log.scrollHeight;
    return node;
  }

  function updateCounter() {
    const n = el.message.value.length;
    el.counter.textContent = n + ' / ' + MAX_LEN;
    el.counter.classList.toggle('near-limit', n > MAX_LEN * 0.9);
  }

  function showSignin(error, notice) {
    generation += 1;
    if (streamAbort) streamAbort.abort();
    streamAbort = token = retry = pendingWelcome = null;
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(NAME_KEY);
    sessionStorage.removeItem(WELCOME_KEY);
    // Nothing from the conversation stays on screen (shared devices).
    el.log.replaceChildren();
    el.message.value = '';
    updateCounter();
    setText(el.chatError, '');
    setText(el.signinError, error);
    setText(el.signinNotice, notice);
    el.chat.hidden = true;
    el.signin.hidden = false;
    el.name.focus();
  }

  function showChat() {
    const gen = ++generation;
    const name = sessionStorage.getItem(NAME_KEY);
    el.log.replaceChildren();
    setText(el.chatError, '');
    setText(el.whoami, name ? 'Signed in as ' + name : '');
    el.signin.hidden = true;
    el.chat.hidden = false;
    el.message.focus();
    run(gen);
  }

  async function loadHistory(signal) {
    const res = await api('GET', '/portal/api/history', undefined, { signal });
    if (res.status === 401) return 'unauthorized';
    if (!res.ok) throw new Error('history ' + res.status);
    const data = await res.json();
    const messages = Array.isArray(data.messages) ? data.messages : [];
    if (pendingWelcome !== null) {
      if (!messages.length) sessionStorage.setItem(WELCOME_KEY, pendingWelcome);
      pendingWelcome = null;
    }
    const welcome = sessionStorage.getItem(WELCOME_KEY);
    const frag = document.createDocumentFragment();
    if (welcome) frag.appendChild(makeWelcome(welcome));
    for (const m of messages) frag.appendChild(makeMsg(m.direction, m.text, 'sent', m.at));
    // aria-busy keeps screen readers from reading out the whole history as "new";
    // insert before anything the patient typed while it was loading.
    el.log.setAttribute('aria-busy', 'true');
    el.log.insertBefore(frag, el.log.firstChild);
    el.log.scrollTop = el.log.scrollHeight;
    el.log.setAttribute('aria-busy', 'false');
    cursor = data.cursor ?? 0;
    return 'ok';
  }

  // Reads one SSE response until it ends: 'ended', 'expired' or 'unauthorized'.
  async function streamOnce(signal, onOpen) {
    const res = await api('GET', '/portal/api/stream?cursor=' + encodeURIComponent(cursor),
      undefined, { signal, accept: 'text/event-stream' });
    if (res.status === 401) return 'unauthorized';
    if (!res.ok || !res.body) throw new Error('stream ' + res.status);
    onOpen();
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buf = '', event = '', data = [];
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return 'ended';
      buf += decoder.decode(value, { stream: true });
      // Keep the unfinished last line, and a trailing '\r' that may be half of '\r\n'.
      const cut = buf.endsWith('\r') ? buf.length - 1 : buf.length;
      const lines = buf.slice(0, cut).split(/\r\n|\r|\n/);
      buf = lines.pop() + buf.slice(cut);
      for (const line of lines) {
        if (line === '') { // blank line ends an event; unlike EventSource, data-less events count too
          if ((event || data.length) && handleEvent(event || 'message', data.join('\n'))) return 'expired';
          event = '';
          data = [];
        } else if (line[0] !== ':') { // ':' lines are comments / keep-alives
          const i = line.indexOf(':');
          const field = i < 0 ? line : line.slice(0, i);
          const val = i < 0 ? '' : line.slice(i + 1).replace(/^ /, '');
          if (field === 'event') event = val;
          else if (field === 'data') data.push(val);
        }
      }
    }
  }

  // Returns true when the server says the session has expired.
  function handleEvent(type, raw) {
    if (type === 'expired') return true;
    if (type !== 'message') return false;
    let m;
    try { m = JSON.parse(raw); } catch (_) { return false; }
    if (!m || typeof m !== 'object') return false;
    appendMsg(m.direction === 'in' ? 'in' : 'out', m.text, 'sent', m.at);
    if (m.cursor !== undefined && m.cursor !== null) cursor = m.cursor;
    return false;
  }

  // Loads history once, then keeps the stream open, reconnecting with backoff (1s, 2s, ... 10s).
  async function run(gen) {
    let historyLoaded = false;
    let delay = 1000;
    while (gen === generation) {
      const ctl = new AbortController();
      streamAbort = ctl;
      let outcome;
      try {
        if (!historyLoaded) historyLoaded = (outcome = await loadHistory(ctl.signal)) === 'ok';
        if (historyLoaded && gen === generation) outcome = await streamOnce(ctl.signal, () => { delay = 1000; });
      } catch (_) {
        outcome = 'error';
      }
      if (gen !== generation) return;
      if (outcome === 'unauthorized') return showSignin(ENDED);
      if (outcome === 'expired') return showSignin('Your session has expired. Please sign in again.');
      await sleep(delay);
      delay = Math.min(delay * 2, 10000);
    }
  }

  function send() {
    const text = el.message.value;
    if (!text.trim()) return;
    if (text.length > MAX_LEN) return setText(el.chatError, TOO_LONG);
    setText(el.chatError, '');
    let item;
    if (retry && retry.text === text) {
      item = retry;
      item.node.dataset.status = 'sending';
    } else {
      item = { id: crypto.randomUUID(), text, node: appendMsg('in', text, 'sending') };
    }
    retry = null;
    el.message.value = '';
    updateCounter();
    const gen = generation;
    sendChain = sendChain.then(() => deliver(item, gen)).catch(() => { item.node.dataset.status = 'failed'; });
  }

  async function deliver(item, gen) {
    if (gen !== generation) return;
    let res;
    try {
      // A hung request would otherwise block every later message in the chain.
      const signal = AbortSignal.timeout ? AbortSignal.timeout(20000) : undefined;
      res = await api('POST', '/portal/api/messages', { client_message_id: item.id, text: item.text }, { signal });
    } catch (_) {
      if (gen !== generation) return;
      item.node.dataset.status = 'failed';
      retry = item;
      return fail('Not sent. Check your connection and try again.', item.text);
    }
    if (gen !== generation) return;
    if (res.ok) { item.node.dataset.status = 'sent'; return; }
    if (res.status === 401) return showSignin(ENDED);
    item.node.dataset.status = 'failed';
    fail(await errorText(res, res.status === 413 ? TOO_LONG : 'Your message could not be sent. Please try again.'), item.text);
  }

  // Shows the error and puts the text back, unless the patient has already typed something new.
  function fail(message, text) {
    setText(el.chatError, message);
    if (!el.message.value) { el.message.value = text; updateCounter(); }
  }

  el.signinForm.addEventListener('submit', async (e) => {
    e.preventDefault();
    setText(el.signinError, '');
    setText(el.signinNotice, '');
    const name = el.name.value.trim();
    const dob = el.dob.value.trim();
    if (!name) { setText(el.signinError, 'Please enter your full name.'); return el.name.focus(); }
    if (!/^\d{4}-\d{2}-\d{2}$/.test(dob)) {
      setText(el.signinError, 'Please enter your date of birth as year-month-day, for example 1980-04-23.');
      return el.dob.focus();
    }
    el.signinButton.disabled = true;
    try {
      const res = await api('POST', '/portal/api/signin', { name, dob });
      if (res.ok) {
        const data = await res.json();
        token = data.token;
        sessionStorage.setItem(TOKEN_KEY, token);
        sessionStorage.setItem(NAME_KEY, data.display_name || '');
        sessionStorage.removeItem(WELCOME_KEY);
        pendingWelcome = typeof data.welcome === 'string' && data.welcome.trim() ? data.welcome : null;
        el.signinForm.reset(); // don't leave identity details in the hidden form
        showChat();
      } else {
        setText(el.signinError, await errorText(res, res.status === 429
          ? 'Too many attempts. Please wait a few minutes and try again.'
          : 'We could not sign you in. Please check your details.'));
      }
    } catch (_) {
      setText(el.signinError, 'We could not reach the server. Check your connection and try again.');
    } finally {
      el.signinButton.disabled = false;
    }
  });

  el.compose.addEventListener('submit', (e) => { e.preventDefault(); send(); });
  el.message.addEventListener('input', updateCounter);
  el.message.addEventListener('keydown', (e) => {
    // Enter sends, Shift+Enter adds a line; an Enter that confirms IME composition does neither.
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) { e.preventDefault(); send(); }
  });

  el.signoutButton.addEventListener('click', () => {
    const old = token;
    // Clear locally first so the device is signed out even if the request fails.
    showSignin('', 'You have signed out.');
    const headers = { Authorization: 'Bearer ' + old };
    if (old) fetch('/portal/api/signout', { method: 'POST', keepalive: true, headers }).catch(() => {});
  });

  updateCounter();
  if (token) showChat();
})();
