// A line-protocol driver of a real headless Chromium, for the Rust tests.
//
//   node tests/web/driver.mjs
//
// Launches Chromium (TSN_CHROMIUM, default /usr/bin/chromium) with puppeteer-core and a
// fresh profile in a temporary folder (removed at exit), opens one page, then reads one
// JSON command per line on stdin and answers each with one JSON line on stdout:
// {"ok": true, ...} or {"ok": false, "error": "..."}. Nothing else is written to
// stdout; logs go to stderr, the page's console and errors prefixed with `page:`.
//
// Commands (`testid` names an element by its data-testid; every wait is bounded by
// `timeout_ms`, 10 s unless given):
//   {"op":"goto","url":...}                          -> {"ok":true,"status":200}
//   {"op":"type","testid":...,"text":...}            clear the field, then type
//   {"op":"press","testid":...,"key":"Enter"}        focus the element, press the key
//   {"op":"click","testid":...}
//   {"op":"upload","testid":...,"path":...}         choose a file in an <input type=file>
//   {"op":"text","testid":...}                       -> {"ok":true,"text":...} (an input's value)
//   {"op":"children","testid":...}                   -> {"ok":true,"texts":[...]}
//   {"op":"wait_text","testid":...,"contains":...}   until the element's text contains it
//   {"op":"eval","js":...}                           -> {"ok":true,"value":<JSON>}
//        `js` is an expression (awaited if a promise) or else a function body (`return`);
//        BigInts come back as numbers, Uint8Arrays as arrays.
//   {"op":"screenshot","path":...,"width":..,"height":..,"full_page":false}
//   {"op":"dialogs"}                                 -> {"ok":true,"count":n}
//        alert/confirm/prompt dialogs the page opened so far (each was dismissed)
//   {"op":"errors"}                                  -> {"ok":true,"errors":[...]}
//        the page's uncaught errors and console errors so far
//   {"op":"quit"}
// The driver exits when stdin closes or after `quit`.
//
// Environment: TSN_CHROMIUM (the browser), TSN_WT_DEVELOPER_MODE=1 (pass
// --webtransport-developer-mode: no growing delay after failed handshakes, but also
// laxer certificate checks).

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import puppeteer from 'puppeteer-core';

const DEFAULT_TIMEOUT_MS = 10_000;
const CHROMIUM = process.env.TSN_CHROMIUM || '/usr/bin/chromium';

const log = (...parts) => process.stderr.write(`driver: ${parts.join(' ')}\n`);
const answer = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);

const profile = mkdtempSync(path.join(tmpdir(), 'tsn-chromium-'));
let browser = null;
let page = null;
let dialogs = 0;
const pageErrors = [];
let exiting = false;

async function cleanup() {
  if (browser) {
    const b = browser;
    browser = null;
    try {
      await Promise.race([b.close(), new Promise((r) => setTimeout(r, 5_000))]);
    } catch (e) {
      log(`closing chromium: ${e.message}`);
    }
    try {
      b.process()?.kill('SIGKILL');
    } catch {
      // gone already
    }
  }
  try {
    rmSync(profile, { recursive: true, force: true, maxRetries: 3 });
  } catch (e) {
    log(`removing ${profile}: ${e.message}`);
  }
}

async function exit(code) {
  if (exiting) return;
  exiting = true;
  await cleanup();
  process.exit(code);
}

for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP']) process.on(sig, () => exit(1));

function timeoutOf(cmd) {
  const t = Number(cmd.timeout_ms);
  return Number.isFinite(t) && t > 0 ? t : DEFAULT_TIMEOUT_MS;
}

function selector(cmd) {
  if (typeof cmd.testid !== 'string' || cmd.testid === '') throw new Error('testid missing');
  return `[data-testid=${JSON.stringify(cmd.testid)}]`;
}

async function element(cmd) {
  const sel = selector(cmd);
  const el = await page.waitForSelector(sel, { timeout: timeoutOf(cmd) }).catch(() => null);
  if (!el) throw new Error(`no element with data-testid ${JSON.stringify(cmd.testid)} within ${timeoutOf(cmd)} ms`);
  return el;
}

/** Runs `js` in the page: as an expression, or else as an async function body. */
async function evaluate(js, timeout) {
  if (typeof js !== 'string') throw new Error('js missing');
  const wrap = (body) => `(async () => {
    const __v = await (async () => { ${body} })();
    return JSON.stringify(__v === undefined ? null : __v,
      (k, x) => typeof x === 'bigint' ? Number(x) : (x instanceof Uint8Array ? Array.from(x) : x));
  })()`;
  const asExpression = wrap(`return (${js}\n);`);
  const asBody = wrap(js);
  const run = async (code) => page.evaluate(code);
  const bounded = (p) => Promise.race([
    p,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`eval took over ${timeout} ms`)), timeout)),
  ]);
  let out;
  try {
    out = await bounded(run(asExpression));
  } catch (e) {
    if (!/SyntaxError|Unexpected/.test(String(e && e.message))) throw e;
    out = await bounded(run(asBody));
  }
  return out === undefined || out === null ? null : JSON.parse(out);
}

const OPS = {
  async goto(cmd) {
    if (typeof cmd.url !== 'string') throw new Error('url missing');
    const res = await page.goto(cmd.url, { waitUntil: 'load', timeout: timeoutOf(cmd) });
    return { status: res ? res.status() : null };
  },

  async type(cmd) {
    const el = await element(cmd);
    await el.evaluate((e) => {
      e.focus();
      if ('value' in e) e.value = '';
      else e.textContent = '';
      e.dispatchEvent(new Event('input', { bubbles: true }));
    });
    await el.type(String(cmd.text ?? ''));
    return {};
  },

  async press(cmd) {
    const el = await element(cmd);
    await el.focus();
    await page.keyboard.press(String(cmd.key || 'Enter'));
    return {};
  },

  async click(cmd) {
    const el = await element(cmd);
    await el.click();
    return {};
  },

  async upload(cmd) {
    if (typeof cmd.path !== 'string') throw new Error('path missing');
    const el = await element(cmd);
    await el.uploadFile(cmd.path);
    return {};
  },

  async text(cmd) {
    const el = await element(cmd);
    const text = await el.evaluate((e) => (
      e instanceof HTMLInputElement || e instanceof HTMLTextAreaElement ? e.value : e.textContent
    ));
    return { text };
  },

  async children(cmd) {
    const el = await element(cmd);
    const texts = await el.evaluate((e) => Array.from(e.children, (c) => c.textContent));
    return { texts };
  },

  async wait_text(cmd) {
    const sel = selector(cmd);
    const want = String(cmd.contains ?? '');
    const timeout = timeoutOf(cmd);
    const deadline = Date.now() + timeout;
    // Polled from here, each look short: a long wait is not bound by the protocol's
    // timeout, and a page that navigates meanwhile is looked at again.
    let now = null;
    for (;;) {
      now = await page.evaluate((s) => {
        const e = document.querySelector(s);
        return e ? e.textContent : null;
      }, sel).catch(() => null);
      if (now !== null && now.includes(want)) return { text: now };
      if (Date.now() >= deadline) break;
      await new Promise((r) => setTimeout(r, Math.min(50, Math.max(0, deadline - Date.now()))));
    }
    throw new Error(`${JSON.stringify(cmd.testid)} did not contain ${JSON.stringify(want)} within ${timeout} ms; its text: ${JSON.stringify(now)}`);
  },

  async eval(cmd) {
    return { value: await evaluate(cmd.js, timeoutOf(cmd)) };
  },

  async screenshot(cmd) {
    if (typeof cmd.path !== 'string') throw new Error('path missing');
    if (cmd.width || cmd.height) {
      const vp = page.viewport() || { width: 1280, height: 800 };
      await page.setViewport({
        width: Number(cmd.width) || vp.width,
        height: Number(cmd.height) || vp.height,
      });
    }
    await page.screenshot({ path: cmd.path, fullPage: !!cmd.full_page });
    return { path: cmd.path };
  },

  async dialogs() {
    return { count: dialogs };
  },

  async errors() {
    return { errors: pageErrors.slice() };
  },

  async quit() {
    return {};
  },
};

async function handle(line) {
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    answer({ ok: false, error: `not JSON: ${e.message}` });
    return true;
  }
  const op = cmd && typeof cmd === 'object' ? cmd.op : undefined;
  const fn = Object.prototype.hasOwnProperty.call(OPS, op) ? OPS[op] : null;
  if (!fn) {
    answer({ ok: false, error: `unknown op ${JSON.stringify(op)}` });
    return true;
  }
  try {
    const out = await fn(cmd);
    answer({ ok: true, ...out });
  } catch (e) {
    answer({ ok: false, error: String((e && e.message) || e) });
  }
  return op !== 'quit';
}

async function main() {
  browser = await puppeteer.launch({
    executablePath: CHROMIUM,
    headless: true,
    userDataDir: profile,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--disable-default-apps',
      // Chromium counts each failed WebTransport handshake against the next ones for
      // minutes (new handshakes wait longer and longer); a test that kills servers may
      // want that off. Developer mode also relaxes certificate checks, so only on request.
      ...(process.env.TSN_WT_DEVELOPER_MODE === '1' ? ['--webtransport-developer-mode'] : []),
    ],
    protocolTimeout: 60_000,
  });
  browser.on('disconnected', () => {
    if (!exiting) {
      log('chromium went away');
      exit(1);
    }
  });
  const pages = await browser.pages();
  page = pages.length ? pages[0] : await browser.newPage();
  page.setDefaultTimeout(DEFAULT_TIMEOUT_MS);
  page.on('console', (m) => {
    process.stderr.write(`page: console.${m.type()}: ${m.text()}\n`);
    // The browser's own request for /favicon.ico (which the coordinator does not serve)
    // is no error of the page's.
    const from = (m.location() && m.location().url) || '';
    if (m.type() === 'error' && !from.endsWith('/favicon.ico')) {
      pageErrors.push(`console.error: ${m.text()}${from ? ` (${from})` : ''}`);
    }
  });
  page.on('pageerror', (e) => {
    process.stderr.write(`page: error: ${e && e.message ? e.message : e}\n`);
    pageErrors.push(`error: ${e && e.message ? e.message : e}`);
  });
  page.on('requestfailed', (r) => {
    process.stderr.write(`page: request failed: ${r.url()} ${r.failure()?.errorText ?? ''}\n`);
  });
  page.on('response', (r) => {
    if (r.status() >= 400) process.stderr.write(`page: HTTP ${r.status()} for ${r.url()}\n`);
  });
  page.on('dialog', (d) => {
    dialogs += 1;
    process.stderr.write(`page: dialog (${d.type()}): ${d.message()}\n`);
    d.dismiss().catch(() => {});
  });
  log(`chromium ${await browser.version()} ready`);

  const rl = readline.createInterface({ input: process.stdin, terminal: false });
  // One command at a time, in order.
  for await (const line of rl) {
    if (line.trim() === '') continue;
    const more = await handle(line);
    if (!more) break;
  }
  rl.close();
  await exit(0);
}

main().catch(async (e) => {
  log(`failed: ${e && e.stack ? e.stack : e}`);
  answer({ ok: false, error: `driver failed: ${e && e.message ? e.message : e}` });
  await exit(1);
});
