// netwarden dashboard: polls the read-only JSON API and renders with textContent only
// (every string from the network is treated as text, never as markup).
"use strict";

const token = new URLSearchParams(location.hash.slice(1)).get("token");
const headers = token ? { Authorization: "Bearer " + token } : {};
let lastFlowTs = Date.now() / 1000 - 3600;

async function get(path) {
  const r = await fetch(path, { headers });
  if (!r.ok) throw new Error(path + ": " + r.status);
  return r.json();
}

function fmtTime(ts) {
  if (ts === null || ts === undefined) return "—";
  return new Date(ts * 1000).toLocaleTimeString();
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "";
  const units = ["B", "kB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + units[i];
}

function endpoint(addr, port) {
  if (addr === null || addr === undefined) return "";
  const a = String(addr).includes(":") ? "[" + addr + "]" : String(addr);
  return port === null || port === undefined ? a : a + ":" + port;
}

function fill(id, rows, cells, keep) {
  const body = document.querySelector("#" + id + " tbody");
  const frag = document.createDocumentFragment();
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const [value, numeric] of cells(row)) {
      const td = document.createElement("td");
      td.textContent = value === null || value === undefined ? "" : String(value);
      if (numeric) td.className = "num";
      tr.appendChild(td);
    }
    frag.appendChild(tr);
  }
  if (keep) {
    body.insertBefore(frag, body.firstChild);
    while (body.rows.length > keep) body.deleteRow(body.rows.length - 1);
  } else {
    body.replaceChildren(frag);
  }
}

function drawChart(points) {
  // one stacked bar per minute over the last hour: bytes in (blue) under bytes out (red)
  const canvas = document.getElementById("chart");
  const ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, left = 60, bottom = 20;
  ctx.clearRect(0, 0, w, h);
  const now = Date.now() / 1000, t0 = now - 3600;
  const step = 60, slot = (w - left - 5) / 60;
  const max = Math.max(1, ...points.map(p => p.bytes_in + p.bytes_out));
  const y = v => (h - bottom) * v / max;
  canvas.dataset.points = String(points.length);
  for (const p of points) {
    if (p.t + step < t0) continue;
    const x = left + Math.max(0, (p.t - t0) / step) * slot;
    const hin = y(p.bytes_in), hout = y(p.bytes_out);
    ctx.fillStyle = "#2f80ed";
    ctx.fillRect(x, h - bottom - hin, Math.max(1, slot - 1), hin);
    ctx.fillStyle = "#eb5757";
    ctx.fillRect(x, h - bottom - hin - hout, Math.max(1, slot - 1), hout);
  }
  ctx.strokeStyle = "#ccd";
  ctx.beginPath(); ctx.moveTo(left, 5); ctx.lineTo(left, h - bottom); ctx.lineTo(w - 5, h - bottom);
  ctx.stroke();
  ctx.fillStyle = "#667"; ctx.font = "11px sans-serif";
  ctx.fillText(fmtBytes(max), 2, 12);
  ctx.fillText("-60 min", left, h - 5);
  ctx.fillText("now", w - 30, h - 5);
}

async function refresh() {
  try {
    const [status, flows, remotes, procs, scans, blocks, traffic] = await Promise.all([
      get("/api/status"),
      get("/api/flows?since=" + lastFlowTs.toFixed(3) + "&limit=200"),
      get("/api/report?by=ip&since=1h"),
      get("/api/report?by=process&since=1h"),
      get("/api/events?kinds=scan&since=1d"),
      get("/api/blocks"),
      get("/api/traffic?since=1h&step=60"),
    ]);
    document.getElementById("status").textContent =
      "backend " + status.backend + " · up " + Math.round(status.uptime) + " s · " +
      status.flows + " flows";
    const fresh = flows.filter(f => f.ts > lastFlowTs).reverse();
    if (fresh.length) lastFlowTs = Math.max(...fresh.map(f => f.ts));
    fill("flows", fresh, f => [
      [fmtTime(f.ts)], [f.proto], [f.direction], [endpoint(f.src, f.sport)],
      [endpoint(f.dst, f.dport)], [f.comm], [f.pid, true],
      [fmtBytes(f.direction === "in" ? f.resp_bytes : f.orig_bytes), true],
      [fmtBytes(f.direction === "in" ? f.orig_bytes : f.resp_bytes), true],
    ], 100);
    fill("remotes", remotes.slice(0, 15), r => [
      [r.key], [(r.names || []).join(", ")], [fmtBytes(r.bytes), true], [r.conns, true],
      [(r.processes || []).join(", ")],
    ]);
    fill("processes", procs.slice(0, 15), r => [[r.key], [fmtBytes(r.bytes), true], [r.conns, true]]);
    fill("scans", scans.slice(-20).reverse(), s => [
      [fmtTime(s.ts)], [s.scanner], [s.kind], [(s.ports || []).join(",")], [s.targets, true],
    ]);
    fill("blocks", blocks, b => [[b.addr], [fmtTime(b.since)], [fmtTime(b.until)], [b.reason]]);
    drawChart(traffic);
  } catch (err) {
    document.getElementById("status").textContent = "unreachable: " + err.message;
  }
}

refresh();
setInterval(refresh, 2000);
