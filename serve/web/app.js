// The chart page: the candles of one symbol and interval from
// /api/v3/klines, older ones as the user scrolls left, then each update
// from Binance's websocket kline stream (/ws/<symbol>@kline_<interval>).
// Symbol and interval live in the URL (?symbol=&interval=; &limit= sets
// how many candles a load asks for). window.klagg holds what the chart
// shows, for tests and the curious.
"use strict";

const state = window.klagg = { symbol: "", interval: "", candles: [], updates: 0, finals: 0, loadedAt: 0,
  firstUpdateAt: 0, error: "", notice: "", transport: "", olderLoads: 0, pageLoads: 1 };

const el = (id) => document.getElementById(id);
const params = new URLSearchParams(location.search);
const limit = Math.min(1000, Math.max(1, parseInt(params.get("limit") || "1000", 10) || 1000));
const chart = LightweightCharts.createChart(el("chart"), {
  autoSize: true,
  layout: { background: { color: "#101418" }, textColor: "#d8dde3", attributionLogo: true },
  grid: { vertLines: { color: "#1c2229" }, horzLines: { color: "#1c2229" } },
  timeScale: { timeVisible: true, secondsVisible: false },
});
const candles = chart.addCandlestickSeries({ priceScaleId: "right" });
const volume = chart.addHistogramSeries({ priceScaleId: "volume", priceFormat: { type: "volume" } });
chart.priceScale("volume").applyOptions({ scaleMargins: { top: 0.8, bottom: 0 } });
candles.priceScale().applyOptions({ scaleMargins: { top: 0.05, bottom: 0.25 } });

function bar(k) {
  return { time: k.openTime / 1000, open: k.open, high: k.high, low: k.low, close: k.close };
}
function vol(k) {
  return { time: k.openTime / 1000, value: k.volume, color: k.close >= k.open ? "#26a69a88" : "#ef535088" };
}
// Binance's array: [open time, o, h, l, c, volume, close time, ...].
function fromArray(a) {
  return { openTime: a[0], open: +a[1], high: +a[2], low: +a[3], close: +a[4], volume: +a[5], trades: a[8],
    final: false, version: 0 };
}

function notice(text) {
  state.notice = text;
  el("notice").textContent = text;
  el("notice").classList.toggle("shown", text !== "");
}
function status(text) { el("status").textContent = text; }

// Replace or append k in state.candles (ordered by open time). A final
// candle never changes again: a later record for it is ignored.
function upsert(k) {
  const c = state.candles;
  let i = c.length - 1;
  while (i >= 0 && c[i].openTime > k.openTime) i--;
  if (i >= 0 && c[i].openTime === k.openTime) {
    if (c[i].final || c[i].version >= k.version) return false;
    c[i] = k;
  } else {
    c.splice(i + 1, 0, k);
  }
  return true;
}

let socket = null;
let generation = 0; // a newer load makes an older one's callbacks stale

function klines(extra) {
  return fetch("api/v3/klines?" + new URLSearchParams({ symbol: state.symbol, interval: state.interval,
    limit: String(limit), ...extra }));
}

async function load() {
  const gen = ++generation;
  state.symbol = el("symbol").value;
  state.interval = el("interval").value;
  history.replaceState(null, "", "?" + new URLSearchParams({ symbol: state.symbol, interval: state.interval,
    ...(params.has("limit") ? { limit: String(limit) } : {}) }));
  if (socket) { socket.onclose = null; socket.close(); socket = null; }
  notice("");
  const resp = await klines({});
  const body = await resp.json();
  if (gen !== generation) return;
  if (!resp.ok) {
    state.error = body.msg || String(resp.status);
    notice(state.error);
    return;
  }
  state.candles = body.map(fromArray);
  state.exhausted = body.length < limit;
  candles.setData(state.candles.map(bar));
  volume.setData(state.candles.map(vol));
  chart.timeScale().fitContent();
  state.loadedAt = Date.now();
  state.updates = 0;
  state.firstUpdateAt = 0;
  status(state.candles.length + " candles");
  connect(gen, 0);
}

// connect follows the series over the websocket, reconnecting with
// back-off; the server's reason for closing is shown.
function connect(gen, attempt) {
  const base = location.href.replace(/^http/, "ws").replace(/[?#].*$/, "").replace(/[^/]*$/, "");
  const ws = new WebSocket(base + "ws/" + state.symbol.toLowerCase() + "@kline_" + state.interval);
  socket = ws;
  state.transport = "websocket";
  ws.onopen = () => { attempt = 0; };
  ws.onmessage = (m) => {
    const msg = JSON.parse(m.data);
    if (msg.e !== "kline") return;
    const e = msg.k;
    const k = { openTime: e.t, open: +e.o, high: +e.h, low: +e.l, close: +e.c, volume: +e.v, trades: e.n,
      final: e.x, version: e.version };
    if (!upsert(k)) return;
    candles.update(bar(k));
    volume.update(vol(k));
    state.updates++;
    if (k.final) state.finals++;
    if (!state.firstUpdateAt) state.firstUpdateAt = Date.now();
    status(`${state.candles.length} candles · ${state.updates} updates · ${new Date().toISOString().slice(11, 19)} UTC`);
  };
  ws.onclose = (ev) => {
    if (gen !== generation) return;
    const wait = Math.min(30000, 500 * 2 ** attempt);
    status(`stream closed${ev.reason ? " (" + ev.reason + ")" : ""}; again in ${Math.round(wait / 1000)} s`);
    setTimeout(() => { if (gen === generation) connect(gen, attempt + 1); }, wait);
  };
}

// Older candles when the user scrolls near the left edge.
let loadingOlder = false;
chart.timeScale().subscribeVisibleLogicalRangeChange(async (range) => {
  if (!range || range.from > 10 || loadingOlder || state.exhausted || state.candles.length === 0) return;
  loadingOlder = true;
  const gen = generation;
  try {
    const resp = await klines({ endTime: String(state.candles[0].openTime - 1) });
    const body = await resp.json();
    if (gen !== generation || !resp.ok) return;
    if (body.length < limit) state.exhausted = true;
    if (body.length === 0) return;
    state.candles = body.map(fromArray).concat(state.candles);
    candles.setData(state.candles.map(bar));
    volume.setData(state.candles.map(vol));
    state.olderLoads++;
    status(`${state.candles.length} candles · ${body.length} older loaded`);
  } finally {
    loadingOlder = false;
  }
});

async function start() {
  const [symbols, intervals] = await Promise.all([
    fetch("api/v1/symbols").then((r) => r.json()),
    fetch("api/v1/intervals").then((r) => r.json()),
  ]);
  if (symbols.length === 0) {
    // An empty topic (a demo just started): ask again, without reloading.
    status("no candles yet; waiting for the first");
    setTimeout(() => start().catch(fail), 2000);
    return;
  }
  el("symbol").replaceChildren(...symbols.map((s) => new Option(s, s)));
  el("interval").replaceChildren(...intervals.map((i) => new Option(i, i)));
  const wantSymbol = params.get("symbol") || symbols[0];
  const wantInterval = params.get("interval") || (intervals.includes("1m") ? "1m" : intervals[0]);
  el("symbol").onchange = el("interval").onchange = () => load().catch(fail);
  const problems = [];
  if (!symbols.includes(wantSymbol)) problems.push(`Unknown symbol ${wantSymbol}: klagg holds no candle of it (${symbols.length} symbols held; pick one above).`);
  if (!intervals.includes(wantInterval)) problems.push(`Interval ${wantInterval} is not computed; computed: ${intervals.join(", ")}.`);
  el("symbol").value = symbols.includes(wantSymbol) ? wantSymbol : symbols[0];
  el("interval").value = intervals.includes(wantInterval) ? wantInterval : intervals[0];
  if (problems.length > 0) {
    notice(problems.join(" "));
    status("pick a symbol and an interval");
    return;
  }
  await load();
}
function fail(err) { state.error = String(err); notice(state.error); }
start().catch(fail);
