"use strict";
// Money, axes and team colours for the web page: the rules of deepops_infra/money.py and
// deepops_infra/costs/charts.py (tests/test_money.py holds the two to the same table of values).
// Amounts arrive as JSON numbers with at most 6 decimals; they are handled as whole micro-dollars.

const MONEY = (() => {
  const MICRO = 1e6;
  const PALETTE = ["#2f6fde", "#e8772e", "#2aa876", "#c2417e", "#8a5cd6", "#b8a22e", "#2ba6c4", "#9c6b3c"];
  const IDLE = "#d62f2f", OTHER = "#b0b7c3", NONE = "-";

  const group = (n) => String(n).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  const toMicro = (v) => { const x = Number(v); return Math.sign(x) * Math.round(Math.abs(x) * MICRO); };
  const signed = (micro, text) => (micro < 0 ? "-$" : "$") + text;
  const missing = (v) => v === null || v === undefined || v === "";

  function money(v) {
    if (missing(v)) return NONE;
    const micro = toMicro(v), a = Math.abs(micro);
    if (a >= MICRO || a === 0) {
      const cents = Math.floor((a + 5000) / 10000);
      return signed(micro, `${group(Math.floor(cents / 100))}.${String(cents % 100).padStart(2, "0")}`);
    }
    const first = 7 - String(a).length;
    const places = Math.max(2, Math.min(6, first + 1)), step = 10 ** (6 - places);
    const scaled = Math.floor((a + Math.floor(step / 2)) / step), unit = 10 ** places;
    let digits = String(scaled % unit).padStart(places, "0");
    while (digits.length > 2 && digits.endsWith("0")) digits = digits.slice(0, -1);
    return signed(micro, `${group(Math.floor(scaled / unit))}.${digits}`);
  }

  function exact(v) {
    if (missing(v)) return NONE;
    const micro = toMicro(v), a = Math.abs(micro);
    let digits = String(a % MICRO).padStart(6, "0").replace(/0+$/, "");
    while (digits.length < 2) digits += "0";
    return signed(micro, `${group(Math.floor(a / MICRO))}.${digits}`);
  }

  const rate = (v) => (missing(v) ? NONE : exact(v) + "/h");
  const hours = (v, places = 1) => (missing(v) ? NONE : Number(v).toLocaleString("en-US", { minimumFractionDigits: places, maximumFractionDigits: places }));

  // Axis ticks: a step of 1, 2 or 5 x 10^k cutting 0..vmax into about `intervals` pieces.
  function niceStep(vmax, intervals = 4) {
    if (!(vmax > 0)) return { m: 1, e: 0 };
    const [mant, exp] = (vmax / intervals).toExponential(12).split("e").map(Number);
    if (mant < 1.5) return { m: 1, e: exp };
    if (mant < 3) return { m: 2, e: exp };
    if (mant < 7) return { m: 5, e: exp };
    return { m: 1, e: exp + 1 };
  }

  // [[value, label], ...] from 0 to the first tick at or above vmax.
  function axis(vmax, intervals = 4) {
    const { m, e } = niceStep(vmax, intervals), step = Number(`${m}e${e}`);
    const top = vmax > 0 ? vmax : step;
    const count = Math.max(1, Math.ceil(top / step - 1e-9));
    const places = e >= 0 ? 0 : Math.max(2, -e);
    const out = [];
    for (let i = 0; i <= count; i++) {
      const value = Number(`${m * i}e${e}`);
      const [whole, frac] = value.toFixed(places).split(".");
      out.push([value, i === 0 ? "$0" : "$" + group(whole) + (frac ? "." + frac : "")]);
    }
    return out;
  }

  function fnv1a(text) {
    let h = 0x811c9dc5;
    for (const byte of new TextEncoder().encode(text)) h = Math.imul(h ^ byte, 0x01000193) >>> 0;
    return h >>> 0;
  }

  function teamColors(teams) {
    const out = {}, taken = new Set();
    for (const team of [...new Set(teams)].sort()) {
      let slot = fnv1a(team) % PALETTE.length;
      if (taken.size < PALETTE.length) while (taken.has(slot)) slot = (slot + 1) % PALETTE.length;
      taken.add(slot); out[team] = PALETTE[slot];
    }
    return out;
  }

  return { money, exact, rate, hours, axis, teamColors, PALETTE, IDLE, OTHER };
})();

if (typeof module !== "undefined") module.exports = MONEY;
