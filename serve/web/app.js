// The chart page: the candles of one symbol and interval from
// /api/v3/klines, then each update from /api/v1/stream. window.klagg holds
// what the chart shows, for tests and the curious.
"use strict";

const INTERVALS = ["1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d", "3d", "1w", "1M"];
const state = window.klagg = { symbol: "", interval: "", candles: [], updates: 0, finals: 0, loadedAt: 0, firstUpdateAt: 0, error: "" };

const el = (id) => document.getElementById(id);
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

// One candle as the chart wants it; time in seconds (UTC).
function bar(k) {
  return { time: k.openTime / 1000, open: k.open, high: k.high, low: k.low, close: k.close };
}
function vol(k) {
  return { time: k.openTime / 1000, value: k.volume, color: k.close >= k.open ? "#26a69a88" : "#ef535088" };
}

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

let source = null;

async function load() {
  state.symbol = el("symbol").value;
  state.interval = el("interval").value;
  const url = new URLSearchParams({ symbol: state.symbol, interval: state.interval, limit: "1000" });
  if (source) source.close();
  const resp = await fetch("api/v3/klines?" + url);
  const body = await resp.json();
  if (!resp.ok) {
    state.error = body.msg || String(resp.status);
    el("status").textContent = state.error;
    return;
  }
  // Binance's array: [open time, o, h, l, c, volume, close time, ...].
  state.candles = body.map((a) => ({ openTime: a[0], open: +a[1], high: +a[2], low: +a[3], close: +a[4],
    volume: +a[5], trades: a[8], final: false, version: 0 }));
  candles.setData(state.candles.map(bar));
  volume.setData(state.candles.map(vol));
  chart.timeScale().fitContent();
  state.loadedAt = Date.now();
  state.updates = 0;
  state.firstUpdateAt = 0;
  el("status").textContent = state.candles.length + " candles";

  source = new EventSource("api/v1/stream?" + new URLSearchParams({ symbol: state.symbol, interval: state.interval }));
  source.onmessage = (m) => {
    const e = JSON.parse(m.data).k;
    const k = { openTime: e.t, open: +e.o, high: +e.h, low: +e.l, close: +e.c, volume: +e.v, trades: e.n,
      final: e.x, version: e.version };
    if (!upsert(k)) return;
    candles.update(bar(k));
    volume.update(vol(k));
    state.updates++;
    if (k.final) state.finals++;
    if (!state.firstUpdateAt) state.firstUpdateAt = Date.now();
    el("status").textContent = `${state.candles.length} candles · ${state.updates} updates · last ${new Date().toISOString().slice(11, 19)} UTC`;
  };
  source.onerror = () => { el("status").textContent = "stream interrupted; reconnecting…"; };
}

async function start() {
  const params = new URLSearchParams(location.search);
  const symbols = await (await fetch("api/v1/symbols")).json();
  for (const s of symbols) el("symbol").add(new Option(s, s));
  for (const i of INTERVALS) el("interval").add(new Option(i, i));
  el("symbol").value = params.get("symbol") || symbols[0] || "";
  el("interval").value = params.get("interval") || "1m";
  el("symbol").onchange = el("interval").onchange = load;
  if (!el("symbol").value) {
    el("status").textContent = "no candles yet";
    setTimeout(() => location.reload(), 2000);
    return;
  }
  load();
}
start().catch((err) => { state.error = String(err); el("status").textContent = state.error; });
