// Open a viewer page in a headless Firefox over WebDriver BiDi (no driver binary: Firefox speaks it
// itself) and print one JSON line: tiles drawn, failed, deepest level before and after panning to the
// top patch, and the console's errors. Run by test_viewer_browser.py with node --experimental-websocket.
//   node --experimental-websocket firefox_bidi.js PORT URL
const [port, url] = process.argv.slice(2);
const ws = new WebSocket(`ws://127.0.0.1:${port}/session`);
let next = 0;
const pending = {};
const errors = [];
const send = (method, params) =>
  new Promise((resolve, reject) => {
    const id = ++next;
    pending[id] = { resolve, reject };
    ws.send(JSON.stringify({ id, method, params }));
  });
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
ws.onmessage = (event) => {
  const m = JSON.parse(event.data);
  if (m.id && pending[m.id]) (m.type === "error" ? pending[m.id].reject : pending[m.id].resolve)(m.result || m);
  else if (m.method === "log.entryAdded" && m.params.level === "error") errors.push(m.params.text);
};
ws.onopen = async () => {
  try {
    await send("session.new", { capabilities: {} });
    await send("session.subscribe", { events: ["log.entryAdded"] });
    const context = (await send("browsingContext.getTree", {})).contexts[0].context;
    const target = { context };
    const evaluate = async (expression) =>
      JSON.parse((await send("script.evaluate", { target, expression, awaitPromise: false })).result.value);
    const state = `JSON.stringify((() => { const m = window.wsiMil; const item = m && m.state.opened
      && m.viewer.world.getItemAt(0); return { drawn: !!(item && item.getFullyLoaded()),
      levels: m ? m.state.loaded.map((l) => l[0]) : [], failed: m ? m.state.failed : [],
      top: m ? m.pyramid.top_level : null }; })())`;
    const settle = async () => {
      for (let i = 0; i < 100; i++) {
        await sleep(200);
        const s = await evaluate(state);
        if (s.drawn) return s;
      }
      throw new Error("the viewer did not finish drawing");
    };
    await send("browsingContext.setViewport", { context, viewport: { width: 1200, height: 800 } });
    await send("browsingContext.navigate", { context, url, wait: "complete" });
    const before = await settle();
    await evaluate("JSON.stringify(window.wsiMil.panTo(window.wsiMil.data.topk[0].items[0].index) || 0)");
    await sleep(1500);
    const after = await settle();
    console.log(JSON.stringify({ before, after, errors }));
  } catch (err) {
    console.log(JSON.stringify({ error: String(err.message || JSON.stringify(err)) }));
  }
  process.exit(0);
};
ws.onerror = () => { console.log(JSON.stringify({ error: "no BiDi connection" })); process.exit(0); };
