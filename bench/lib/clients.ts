/**
 * Clients for benches and load/fault tests, against a daemon over loopback: SSE completion streams
 * read with plain fetch (timed per token), Prometheus text scraping, WebSocket alert subscribers
 * that timestamp each alert on receipt, and a raw socket that upgrades to WebSocket and then never
 * reads (a stalled subscriber) with a minimal frame parser to read what it was sent afterwards.
 */
import { randomBytes } from 'node:crypto';
import { connect, type Socket } from 'node:net';
import WebSocket from 'ws';

/** Epoch microseconds on this process's monotonic clock (the daemon's `forwardAtUs` uses the same). */
export const nowUs = (): number => (performance.timeOrigin + performance.now()) * 1000;

/**
 * Wall clock − this thread's `nowUs`, in µs. performance.timeOrigin is fixed per process and per
 * worker thread with an error of a few ms (two processes' `nowUs` differed by up to 5 ms here), which
 * is the size of what the alert benches measure across processes; so each side reads its offset to
 * the wall clock at a millisecond edge of Date.now() (good to a few µs) and latencies are taken on
 * wall-aligned times. The median of `samples` edges; spins for up to `samples` ms.
 */
export function wallOffsetUs(samples = 5): number {
  const xs: number[] = [];
  for (let i = 0; i < samples; i++) {
    const t0 = Date.now();
    let t = t0;
    while (t === t0) t = Date.now();
    xs.push(t * 1000 - nowUs());
  }
  xs.sort((a, b) => a - b);
  return xs[Math.floor(xs.length / 2)];
}

let ownOffsetUs: number | undefined;
/** This process's `wallOffsetUs`, read once. */
export const processWallOffsetUs = (): number => (ownOffsetUs ??= wallOffsetUs());

export interface StreamResult {
  status: number;
  /** Parsed `data:` events (the final `[DONE]` excluded). */
  events: Record<string, unknown>[];
  done: boolean;
  /** Receipt times (performance.now() ms) of events that carried text. */
  tokenTimes: number[];
  startedAt: number;
  endedAt: number;
  completionTokens: number | null;
  /** An `error` object sent in the stream, or the JSON error body of a non-200 answer. */
  error: { code?: string; message?: string } | null;
  text: string;
}

/**
 * POST a streaming completion/chat request and read the SSE stream to the end (or until `signal`).
 * `onEvent` sees every parsed event as it arrives.
 */
export async function streamRequest(
  url: string,
  path: '/v1/completions' | '/v1/chat/completions',
  body: Record<string, unknown>,
  o: { key?: string; signal?: AbortSignal; onEvent?: (ev: Record<string, unknown>, n: number) => void } = {},
): Promise<StreamResult> {
  const startedAt = performance.now();
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (o.key) headers.authorization = `Bearer ${o.key}`;
  const res = await fetch(`${url}${path}`, { method: 'POST', headers, body: JSON.stringify({ ...body, stream: true, stream_options: { include_usage: true } }), signal: o.signal });
  const out: StreamResult = { status: res.status, events: [], done: false, tokenTimes: [], startedAt, endedAt: startedAt, completionTokens: null, error: null, text: '' };
  if (res.status !== 200 || !res.body) {
    const j = (await res.json().catch(() => null)) as { error?: { code?: string; message?: string } } | null;
    out.error = j?.error ?? { message: `HTTP ${res.status}` };
    out.endedAt = performance.now();
    return out;
  }
  const decoder = new TextDecoder();
  let buf = '';
  for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
    buf += decoder.decode(chunk, { stream: true });
    for (let i = buf.indexOf('\n\n'); i >= 0; i = buf.indexOf('\n\n')) {
      const raw = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (!raw.startsWith('data: ')) continue;
      const data = raw.slice(6);
      if (data === '[DONE]') {
        out.done = true;
        continue;
      }
      const ev = JSON.parse(data) as Record<string, unknown>;
      out.events.push(ev);
      o.onEvent?.(ev, out.events.length);
      if (ev.error) out.error = ev.error as StreamResult['error'];
      const choices = ev.choices as { text?: string; delta?: { content?: string } }[] | undefined;
      const t = choices?.[0]?.text ?? choices?.[0]?.delta?.content;
      if (t) {
        out.text += t;
        out.tokenTimes.push(performance.now());
      }
      const usage = ev.usage as { completion_tokens?: number } | undefined;
      if (usage?.completion_tokens !== undefined) out.completionTokens = usage.completion_tokens;
    }
  }
  out.endedAt = performance.now();
  return out;
}

/** Sum of the samples of a metric family whose labels include `labels` (Prometheus text format). */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let sum = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(`${name}{`) && !line.startsWith(`${name} `)) continue;
    if (Object.entries(labels).every(([k, v]) => line.includes(`${k}="${v}"`))) sum += Number(line.split(' ').at(-1));
  }
  return sum;
}

export async function scrape(url: string, name: string, labels: Record<string, string> = {}): Promise<number> {
  return metricValue(await (await fetch(`${url}/metrics`)).text(), name, labels);
}

export interface ReceivedAlert {
  id: number;
  probeId: string;
  /** The alert's `ts` (daemon wall clock, ms). */
  tsMs: number;
  /** Daemon clock (epoch µs) when the forward pass returned; absent on replayed alerts. */
  forwardAtUs?: number;
  /** This process's clock (epoch µs) when the message was parsed. */
  receivedAtUs: number;
  /** The same on the wall clock (receivedAtUs + this thread's wallOffsetUs): compare with a daemon's forwardAtUs + its own offset. */
  receivedWallUs: number;
}

/**
 * Forward pass → receipt of a live alert in ms, both ends on the wall clock (`daemonOffsetUs`: the
 * raising daemon's wall clock − its forwardAtUs clock); null for a replayed alert (no forwardAtUs).
 */
export function receiptLatencyMs(a: ReceivedAlert, daemonOffsetUs: number): number | null {
  return a.forwardAtUs === undefined ? null : (a.receivedWallUs - (a.forwardAtUs + daemonOffsetUs)) / 1000;
}

export interface Subscriber {
  ws: WebSocket;
  alerts: ReceivedAlert[];
  closeCode: number | null;
  opened: Promise<void>;
}

/** A WebSocket subscriber to /v1/alerts that records each alert with its receipt time. */
export function subscribe(url: string, o: { key?: string; query?: string; onAlert?: (a: ReceivedAlert) => void } = {}): Subscriber {
  const ws = new WebSocket(`${url.replace(/^http/, 'ws')}/v1/alerts${o.query ?? ''}`, o.key ? { headers: { authorization: `Bearer ${o.key}` } } : {});
  const s: Subscriber = {
    ws,
    alerts: [],
    closeCode: null,
    opened: new Promise((resolve, reject) => {
      ws.once('open', () => resolve());
      ws.once('error', reject);
    }),
  };
  const offsetUs = processWallOffsetUs();
  ws.on('message', (m) => {
    const receivedAtUs = nowUs();
    const msg = JSON.parse(String(m)) as { type: string; alert?: { id: number; probeId: string; ts: string }; forwardAtUs?: number };
    if (msg.type !== 'alert' || !msg.alert) return;
    const a: ReceivedAlert = { id: msg.alert.id, probeId: msg.alert.probeId, tsMs: Date.parse(msg.alert.ts), receivedAtUs, receivedWallUs: receivedAtUs + offsetUs };
    if (msg.forwardAtUs !== undefined) a.forwardAtUs = msg.forwardAtUs;
    s.alerts.push(a);
    o.onAlert?.(a);
  });
  ws.on('close', (code) => (s.closeCode = code));
  ws.on('error', () => {});
  return s;
}

export interface StalledSubscriber {
  socket: Socket;
  /** Resolves once the 101 response has arrived; from then on the socket is paused and never read. */
  upgraded: Promise<void>;
  /**
   * Start reading again and collect frames until the server closes the connection; resolves with
   * the close frame's code (null if none arrived) and the number of text frames read.
   */
  drain(timeoutMs: number): Promise<{ closeCode: number | null; textFrames: number }>;
}

/** A subscriber that performs the WebSocket upgrade on a raw TCP socket, then stops reading. */
export function stalledSubscriber(url: string, o: { key?: string; query?: string } = {}): StalledSubscriber {
  const u = new URL(url);
  const socket = connect({ host: u.hostname, port: Number(u.port) });
  let head = Buffer.alloc(0);
  let rest = Buffer.alloc(0);
  const upgraded = new Promise<void>((resolve, reject) => {
    socket.once('error', reject);
    socket.once('connect', () => {
      socket.write(
        [
          `GET /v1/alerts${o.query ?? ''} HTTP/1.1`,
          `Host: ${u.host}`,
          'Upgrade: websocket',
          'Connection: Upgrade',
          `Sec-WebSocket-Key: ${randomBytes(16).toString('base64')}`,
          'Sec-WebSocket-Version: 13',
          ...(o.key ? [`Authorization: Bearer ${o.key}`] : []),
          '',
          '',
        ].join('\r\n'),
      );
    });
    const onData = (b: Buffer) => {
      head = Buffer.concat([head, b]);
      const end = head.indexOf('\r\n\r\n');
      if (end < 0) return;
      socket.off('data', onData);
      socket.pause();
      const status = head.subarray(0, head.indexOf('\r\n')).toString();
      rest = head.subarray(end + 4);
      if (!status.includes(' 101 ')) reject(new Error(`upgrade refused: ${head.toString()}`));
      else resolve();
    };
    socket.on('data', onData);
  });
  socket.on('error', () => {});
  const drain = (timeoutMs: number) =>
    new Promise<{ closeCode: number | null; textFrames: number }>((resolve) => {
      let buf = rest;
      let closeCode: number | null = null;
      let textFrames = 0;
      const finish = () => {
        clearTimeout(timer);
        socket.destroy();
        resolve({ closeCode, textFrames });
      };
      const timer = setTimeout(finish, timeoutMs);
      const parse = () => {
        for (;;) {
          if (buf.length < 2) return;
          const opcode = buf[0] & 0x0f;
          let len = buf[1] & 0x7f;
          let off = 2;
          if (len === 126) {
            if (buf.length < 4) return;
            len = buf.readUInt16BE(2);
            off = 4;
          } else if (len === 127) {
            if (buf.length < 10) return;
            len = Number(buf.readBigUInt64BE(2));
            off = 10;
          }
          if (buf.length < off + len) return;
          const payload = buf.subarray(off, off + len);
          buf = buf.subarray(off + len);
          if (opcode === 0x1) textFrames++;
          if (opcode === 0x8) {
            closeCode = payload.length >= 2 ? payload.readUInt16BE(0) : null;
            finish();
            return;
          }
        }
      };
      socket.on('data', (b: Buffer) => {
        buf = Buffer.concat([buf, b]);
        parse();
      });
      socket.once('close', finish);
      parse();
      socket.resume();
    });
  return { socket, upgraded, drain };
}

/** Wait until `cond()` holds or `ms` pass; returns whether it held. */
export async function until(cond: () => boolean | Promise<boolean>, ms: number, stepMs = 20): Promise<boolean> {
  const end = Date.now() + ms;
  for (;;) {
    if (await cond()) return true;
    if (Date.now() > end) return false;
    await new Promise((r) => setTimeout(r, stepMs));
  }
}
