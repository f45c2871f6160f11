/**
 * bench/proxy.ts: proxy mode (`serve --upstream`, issue 16) against local serving, on one machine.
 *
 *   1. Local serving: `latentwatch serve` on the built-in model with its bundled probes generates C
 *      concurrent streams (greedy, EOS banned, --tokens each); generated tokens per second. Its
 *      streams (with return_token_ids) are recorded.
 *   2. Scoring capacity in proxy mode: one replica (`serve --upstream`, same model and probes) in
 *      front of a replay upstream that sends the recorded answers at once, so the replica, not the
 *      generation, is the bottleneck; tokens scored per second over C concurrent streams, and how
 *      many local-serving streams' worth of tokens that is.
 *   2b. Cross-request batching, before/after in the same run: the same capacity measurement with
 *      `--no-upstream-batch-steps` (before: a lone token joins the shared decode pass, several
 *      tokens take a pass of their own) and the default (after: a stream's few tokens also go as
 *      one-token steps in the shared passes, proxy.ts scoringPlan), with the answers sent at once
 *      and trickled (--trickle-ms apart per stream: 2 saturates the replica with several tokens
 *      waiting per stream; 10 leaves it a few).
 *   2c. The same in process, without HTTP: C teacher-forced streams on one engine (proxy.ts
 *      teacherForced), each stream's tokens arriving k at a time (the next once the last are
 *      scored); scored tokens per second and forward passes per scored token, before and after.
 *   3. Added latency per chunk: the replay upstream paces its chunks (--pace-ms apart, a GPU
 *      server's rate) and stamps each with its send time; a client reads them directly from the
 *      replay upstream and through the proxy; the difference of the per-chunk delays is what the
 *      proxy adds (scoring each chunk and storing its alerts before passing it on).
 * The replay upstream is a recording of real latentwatch answers (step 1), not a model: in this
 * bench it stands for a fast GPU server so that the replica's own cost is what is measured.
 *
 * Usage: npx tsx bench/proxy.ts [--quick] [--tokens N] [--pace-ms MS] [--trickle-ms MS[,MS...]] [--out DIR]
 * Writes proxy.json and proxy.md to --out (default docs/reports/bench).
 */
import { createServer, type Server } from 'node:http';
import { mkdtempSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { scoringPlan, teacherForced, TokenFeed } from '../src/daemon/proxy.js';
import { Engine } from '../src/engine/engine.js';
import { DEFAULT_MODEL_DIR, PACKAGE_ROOT } from '../src/paths.js';
import { streamRequest } from './lib/clients.js';
import { spawnDaemonProcess, type DaemonProcess } from './lib/daemon-process.js';
import { describeMachine, machineMarkdown } from './lib/machine.js';
import { markdownTable, parseArgs, writeJson, writeText } from './lib/report.js';
import { quantile, round } from './lib/stats.js';

const args = parseArgs(process.argv.slice(2), ['tokens', 'pace-ms', 'trickle-ms', 'out']);
const quick = args.has('quick');
const TOKENS = args.num('tokens', quick ? 48 : 128);
const PACE_MS = args.num('pace-ms', 20);
/** Trickled arrivals: ms between one stream's chunks (comma-separated settings). */
const TRICKLE_MS = args
  .get('trickle-ms', quick ? '10' : '2,10')!
  .split(',')
  .map(Number);
const OUT = args.get('out', join(PACKAGE_ROOT, 'docs', 'reports', 'bench'))!;
const KEY = 'bench-proxy-key';
const MODEL = 'qwen2-code-16m';
const PROMPTS = ['def main():\n', 'import os\n\ndef walk(root):\n', 'class Cache:\n    def ', '# parse the config\nfor line in ', 'def test_add():\n    assert ', 'with open(path) as f:\n    ', 'x = [i * 2 for i in ', 'async def fetch(url):\n'];
const LOCAL_CONCURRENCY = quick ? [1, 4] : [1, 4, 8];
const PROXY_CONCURRENCY = quick ? [1, 4] : [1, 4, 8];
const ROUNDS = quick ? 2 : 4;

const body = (prompt: string) => ({ model: MODEL, prompt, max_tokens: TOKENS, temperature: 0, logit_bias: { '0': -100 }, return_token_ids: true });

function serveArgs(extra: string[]): string[] {
  return ['--model', DEFAULT_MODEL_DIR, '--port', '0', '--log-level', 'warn', '--alert-log', join(mkdtempSync(join(tmpdir(), 'lw-bench-proxy-')), 'alerts.db'), '--max-concurrent', '16', ...extra];
}

function tokensOf(events: Record<string, unknown>[]): number {
  return events.reduce((n, ev) => n + ((ev.choices as { token_ids?: number[] }[] | undefined)?.[0]?.token_ids?.length ?? 0), 0);
}

/** C clients, each sending `rounds` requests in turn; tokens per second over the whole run. */
async function concurrentRate(url: string, c: number, rounds: number, record?: Map<string, string[]>): Promise<{ tokens: number; seconds: number; tokPerS: number; errors: number }> {
  const started = performance.now();
  let tokens = 0;
  let errors = 0;
  await Promise.all(
    Array.from({ length: c }, async (_, client) => {
      for (let r = 0; r < rounds; r++) {
        const prompt = PROMPTS[(client + r * c) % PROMPTS.length];
        const res = await streamRequest(url, '/v1/completions', body(prompt), { key: KEY });
        if (res.error || !res.done) errors++;
        tokens += tokensOf(res.events);
        if (record && !record.has(prompt) && !res.error) record.set(prompt, res.events.map((e) => JSON.stringify(e)));
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  return { tokens, seconds: round(seconds), tokPerS: round(tokens / seconds, 4), errors };
}

/**
 * C clients, each sending `rounds` requests in turn: scored tokens per second, and each text
 * chunk's delay (receipt − the replay upstream's send) after the first of its stream.
 */
async function rateAndDelays(url: string, c: number, rounds: number): Promise<{ tokPerS: number; delayP50: number; delayP99: number; load1m: number; errors: number }> {
  const started = performance.now();
  let tokens = 0;
  let errors = 0;
  const delays: number[] = [];
  await Promise.all(
    Array.from({ length: c }, async (_, client) => {
      for (let r = 0; r < rounds; r++) {
        let n = 0;
        const res = await streamRequest(url, '/v1/completions', body(PROMPTS[(client + r * c) % PROMPTS.length]), {
          key: KEY,
          onEvent: (ev) => {
            const sent = ev.bench_sent_ms;
            if (typeof sent === 'number' && (ev.choices as unknown[] | undefined)?.length && n++ > 0) delays.push(performance.now() - sent);
          },
        });
        if (res.error || !res.done) errors++;
        tokens += tokensOf(res.events);
      }
    }),
  );
  const seconds = (performance.now() - started) / 1000;
  return { tokPerS: round(tokens / seconds, 4), delayP50: round(quantile(delays, 0.5), 3), delayP99: round(quantile(delays, 0.99), 3), load1m: round(loadavg()[0], 2), errors };
}

/** An OpenAI-compatible upstream that replays recorded streams, at once or paced, stamping each chunk's send time. */
function replayUpstream(recordings: Map<string, string[]>): { server: Server; url: Promise<string>; pace: { ms: number } } {
  const pace = { ms: 0 };
  const server = createServer((req, res) => {
    if (req.method === 'GET' && req.url === '/v1/models') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ object: 'list', data: [{ id: MODEL, object: 'model' }] }));
      return;
    }
    let raw = '';
    req.on('data', (b: Buffer) => (raw += b.toString()));
    req.on('end', () => {
      const prompt = (JSON.parse(raw) as { prompt: string }).prompt;
      const chunks = recordings.get(prompt) ?? [...recordings.values()][0];
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
      const send = (i: number) => {
        if (i === chunks.length) {
          res.end('data: [DONE]\n\n');
          return;
        }
        const chunk = JSON.parse(chunks[i]) as Record<string, unknown>;
        chunk.bench_sent_ms = performance.now();
        res.write(`data: ${JSON.stringify(chunk)}\n\n`);
        if (pace.ms > 0) setTimeout(() => send(i + 1), pace.ms);
        else send(i + 1);
      };
      send(0);
    });
  });
  const url = new Promise<string>((resolve) => server.listen(0, '127.0.0.1', () => resolve(`http://127.0.0.1:${(server.address() as { port: number }).port}`)));
  return { server, url, pace };
}

/** Per-chunk delay (receipt − send, ms) of the text chunks after the first, over C paced streams. */
async function chunkDelays(url: string, c: number): Promise<{ first: number[]; rest: number[] }> {
  const first: number[] = [];
  const rest: number[] = [];
  await Promise.all(
    Array.from({ length: c }, async (_, client) => {
      let n = 0;
      await streamRequest(url, '/v1/completions', body(PROMPTS[client % PROMPTS.length]), {
        key: KEY,
        onEvent: (ev) => {
          const sent = ev.bench_sent_ms;
          if (typeof sent !== 'number' || !(ev.choices as unknown[] | undefined)?.length) return;
          (n++ === 0 ? first : rest).push(performance.now() - sent);
        },
      });
    }),
  );
  return { first, rest };
}

const machine = describeMachine();
const loadAtStart = loadavg()[0];
const log = (s: string) => process.stderr.write(`${s}\n`);

// 1. Local serving.
log(`local serving: ${TOKENS} tokens per request, concurrency ${LOCAL_CONCURRENCY.join(', ')}`);
const recordings = new Map<string, string[]>();
let local: DaemonProcess | undefined = await spawnDaemonProcess({ argv: serveArgs([]), env: { LATENTWATCH_API_KEY: KEY } });
const localRates: Record<string, Awaited<ReturnType<typeof concurrentRate>>> = {};
try {
  await concurrentRate(local.url, 1, 1); // warm-up
  await concurrentRate(local.url, PROMPTS.length, 1, recordings);
  for (const c of LOCAL_CONCURRENCY) {
    localRates[c] = await concurrentRate(local.url, c, ROUNDS);
    log(`  C=${c}: ${localRates[c].tokPerS} generated tok/s`);
  }
} finally {
  await local.stop();
  local = undefined;
}

// 2. and 3. Proxy mode in front of the replay upstream.
const replay = replayUpstream(recordings);
const replayUrl = await replay.url;
const proxy = await spawnDaemonProcess({ argv: serveArgs(['--upstream', `${replayUrl}/v1`]), env: { LATENTWATCH_API_KEY: KEY } });
const proxyRates: Record<string, Awaited<ReturnType<typeof concurrentRate>>> = {};
type Rate = Awaited<ReturnType<typeof rateAndDelays>>;
const batching: { arrival: string; paceMs: number; c: number; reps: number; before: Rate; after: Rate }[] = [];
const REPS = quick ? 1 : 3;
/** The median run of several (by tokens per second), its figures kept together. */
const medianRun = (runs: Rate[]): Rate => [...runs].sort((a, b) => a.tokPerS - b.tokPerS)[runs.length >> 1];
const latency: Record<string, { direct: { first: number[]; rest: number[] }; proxied: { first: number[]; rest: number[] }; passThrough: { first: number[]; rest: number[] } }> = {};
try {
  await concurrentRate(proxy.url, 1, 1); // warm-up
  for (const c of PROXY_CONCURRENCY) {
    proxyRates[c] = await concurrentRate(proxy.url, c, ROUNDS);
    log(`  proxy C=${c}: ${proxyRates[c].tokPerS} scored tok/s`);
  }
  // 2b. Before/after the cross-request batching of several tokens, the same run, alternating, on two
  // fresh replicas warmed alike (a replica that has served more runs faster: JIT, grown caches).
  const before = await spawnDaemonProcess({ argv: serveArgs(['--upstream', `${replayUrl}/v1`, '--no-upstream-batch-steps']), env: { LATENTWATCH_API_KEY: KEY } });
  const after = await spawnDaemonProcess({ argv: serveArgs(['--upstream', `${replayUrl}/v1`]), env: { LATENTWATCH_API_KEY: KEY } });
  try {
    for (const d of [before, after]) for (const c of PROXY_CONCURRENCY) await concurrentRate(d.url, c, 1); // warm-up
    for (const [arrival, paceMs] of [['at once', 0] as const, ...TRICKLE_MS.map((ms) => [`trickled, ${ms} ms apart`, ms] as const)]) {
      replay.pace.ms = paceMs;
      for (const c of PROXY_CONCURRENCY) {
        const runs: { before: Rate[]; after: Rate[] } = { before: [], after: [] };
        for (let rep = 0; rep < REPS; rep++) {
          // Alternate which goes first, so that drifting load does not favour one.
          for (const which of rep % 2 === 0 ? (['before', 'after'] as const) : (['after', 'before'] as const)) {
            runs[which].push(await rateAndDelays(which === 'before' ? before.url : after.url, c, ROUNDS));
          }
        }
        const row = { arrival, paceMs, c, reps: REPS, before: medianRun(runs.before), after: medianRun(runs.after) };
        batching.push(row);
        log(`  ${arrival} C=${c}: before ${row.before.tokPerS} tok/s (chunk delay p50 ${row.before.delayP50} ms), after ${row.after.tokPerS} tok/s (${row.after.delayP50} ms)`);
      }
    }
  } finally {
    await before.stop();
    await after.stop();
  }
  replay.pace.ms = PACE_MS;
  const passing = await spawnDaemonProcess({ argv: serveArgs(['--upstream', `${replayUrl}/v1`, '--upstream-pass-through']), env: { LATENTWATCH_API_KEY: KEY } });
  try {
    for (const c of [1, 4]) {
      const direct = await chunkDelays(replayUrl, c);
      const proxied = await chunkDelays(proxy.url, c);
      const passThrough = await chunkDelays(passing.url, c);
      latency[c] = { direct, proxied, passThrough };
      log(`  paced C=${c}: chunk delay p50 direct ${round(quantile(direct.rest, 0.5))} ms, proxied ${round(quantile(proxied.rest, 0.5))} ms, pass-through ${round(quantile(passThrough.rest, 0.5))} ms`);
    }
  } finally {
    await passing.stop();
  }
} finally {
  await proxy.stop();
  replay.server.close();
}

// 2c. In process: teacher-forced streams on one engine, k tokens per arrival.
log('in process: teacher-forced streams on one engine');
type EngineRun = { tokPerS: number; passesPerToken: number; load1m: number };
const inProcess: { k: number; c: number; reps: number; before: EngineRun; after: EngineRun }[] = [];
{
  const engine = await Engine.load(DEFAULT_MODEL_DIR, { maxBatch: 16 });
  const taps = [...engine.taps];
  const tokenizer = engine.tokenizer!;
  const streams = PROMPTS.map((p) => tokenizer.encode(p));
  const continuation = Array.from({ length: TOKENS }, (_, i) => 100 + ((i * 37) % 5000));
  /** C streams scored together, each's tokens arriving k at a time; passes counted (shared ones from the batcher, lone ones here). */
  const run = async (c: number, k: number, batchSteps: boolean): Promise<EngineRun> => {
    const shared = engine.batcher.stats.passes;
    let lone = 0;
    let active = c;
    const started = performance.now();
    await Promise.all(
      Array.from({ length: c }, async (_, i) => {
        const feed = new TokenFeed();
        let at = 0;
        const next = () => {
          if (at >= continuation.length) return feed.end();
          const ids = continuation.slice(at, at + k);
          at += k;
          // The scorer takes this arrival alone (the next comes once it is scored): its plan, as teacherForced makes it.
          if (scoringPlan(ids.length, true, active, batchSteps) === 'alone') lone++;
          feed.push({ ids, text: '', onScored: next });
        };
        next();
        const source = teacherForced(engine, feed, { onTruncated: () => undefined, streams: () => active, batchSteps });
        lone++; // the prompt's pass
        for await (const step of source({ promptIds: streams[i % streams.length], maxTokens: TOKENS, taps })) void step;
        active--;
      }),
    );
    const seconds = (performance.now() - started) / 1000;
    const sharedPasses = engine.batcher.stats.passes - shared;
    return { tokPerS: round((c * TOKENS) / seconds, 4), passesPerToken: round((sharedPasses + lone) / (c * TOKENS), 4), load1m: round(loadavg()[0], 2) };
  };
  for (const batchSteps of [true, false]) await run(Math.max(...PROXY_CONCURRENCY), 2, batchSteps); // warm-up
  for (const k of [2, 4]) {
    for (const c of PROXY_CONCURRENCY) {
      const runs: { before: EngineRun[]; after: EngineRun[] } = { before: [], after: [] };
      for (let rep = 0; rep < REPS; rep++) {
        for (const which of rep % 2 === 0 ? (['before', 'after'] as const) : (['after', 'before'] as const)) runs[which].push(await run(c, k, which === 'after'));
      }
      const med = (xs: EngineRun[]) => [...xs].sort((a, b) => a.tokPerS - b.tokPerS)[xs.length >> 1];
      const row = { k, c, reps: REPS, before: med(runs.before), after: med(runs.after) };
      inProcess.push(row);
      log(`  k=${k} C=${c}: before ${row.before.tokPerS} tok/s (${row.before.passesPerToken} passes/token), after ${row.after.tokPerS} tok/s (${row.after.passesPerToken})`);
    }
  }
  await engine.close();
}

const q = (v: number[], p: number) => round(quantile(v, p), 3);
const bestLocal = Math.max(...Object.values(localRates).map((r) => r.tokPerS));
const oneStream = localRates[1].tokPerS;
const bestProxy = Math.max(...Object.values(proxyRates).map((r) => r.tokPerS));
const result = {
  bench: 'proxy',
  quick,
  machine,
  loadAvg1m: { start: round(loadAtStart, 2), end: round(loadavg()[0], 2) },
  model: MODEL,
  probes: 'bundled (DIR/probes)',
  tokensPerRequest: TOKENS,
  localServing: Object.fromEntries(Object.entries(localRates).map(([c, r]) => [c, r])),
  proxyScoring: Object.fromEntries(Object.entries(proxyRates).map(([c, r]) => [c, r])),
  summary: {
    localGeneratedTokPerSBest: bestLocal,
    localGeneratedTokPerSOneStream: oneStream,
    proxyScoredTokPerSBest: bestProxy,
    /** How many local single-stream generations' worth of tokens one proxy replica scores. */
    streamsWorthOfOneStream: round(bestProxy / oneStream, 3),
    /** Scored over generated, both at their best concurrency. */
    scoredOverGeneratedBest: round(bestProxy / bestLocal, 3),
  },
  /** Scored tok/s without (before) and with (after) several tokens scored as shared one-token steps. */
  crossRequestBatching: batching.map((b) => ({ ...b, afterOverBefore: round(b.after.tokPerS / b.before.tokPerS, 3) })),
  /** In process, without HTTP: C teacher-forced streams, k tokens per arrival, before/after. */
  crossRequestBatchingInProcess: inProcess.map((b) => ({ ...b, afterOverBefore: round(b.after.tokPerS / b.before.tokPerS, 3) })),
  paceMs: PACE_MS,
  chunkLatencyMs: Object.fromEntries(
    Object.entries(latency).map(([c, l]) => [
      c,
      {
        chunks: l.proxied.rest.length,
        direct: { p50: q(l.direct.rest, 0.5), p90: q(l.direct.rest, 0.9), p99: q(l.direct.rest, 0.99) },
        proxied: { p50: q(l.proxied.rest, 0.5), p90: q(l.proxied.rest, 0.9), p99: q(l.proxied.rest, 0.99) },
        passThrough: { p50: q(l.passThrough.rest, 0.5), p90: q(l.passThrough.rest, 0.9), p99: q(l.passThrough.rest, 0.99) },
        addedP50: round(quantile(l.proxied.rest, 0.5) - quantile(l.direct.rest, 0.5), 3),
        addedP99: round(quantile(l.proxied.rest, 0.99) - quantile(l.direct.rest, 0.99), 3),
        firstChunk: { direct: q(l.direct.first, 0.5), proxied: q(l.proxied.first, 0.5) },
      },
    ]),
  ),
};

const md = `# Proxy mode: scoring an upstream's tokens vs generating them locally

\`npx tsx bench/proxy.ts${quick ? ' --quick' : ''}\` (${new Date().toISOString().slice(0, 10)}), ${MODEL} with its bundled probes, ${TOKENS} tokens per request, CPU.
Load average (1 min) at start ${result.loadAvg1m.start}, at end ${result.loadAvg1m.end}: the machine is shared with other work, so the figures are indicative.

## Tokens per second

${markdownTable(
  ['what', 'concurrent streams', 'tokens', 'seconds', 'tokens/s'],
  [
    ...Object.entries(localRates).map(([c, r]) => ['local serving: generated', c, r.tokens, r.seconds, r.tokPerS]),
    ...Object.entries(proxyRates).map(([c, r]) => ['proxy mode: scored (teacher-forced)', c, r.tokens, r.seconds, r.tokPerS]),
  ],
)}

One proxy replica scores **${round(bestProxy, 1)} tok/s** at best, ${round(result.summary.streamsWorthOfOneStream, 1)}× one locally generating stream (${round(oneStream, 1)} tok/s) and ${round(result.summary.scoredOverGeneratedBest, 2)}× local serving at its best concurrency (${round(bestLocal, 1)} tok/s): the tokens of a stream arrive together and are scored in prefill-shaped passes, not one decode pass each.

## Cross-request batching: before and after

Scored tokens per second of one replica with \`--no-upstream-batch-steps\` (before: a lone token joins the decode pass shared with other streams, several tokens take a pass of their own) and the default (after: a stream's few tokens, up to half the streams scoring, also go as one-token steps in the shared passes; proxy.ts \`scoringPlan\`). onnxruntime's CPU attention takes several new positions per row only in a batch of one, so a multi-token pass cannot be shared. Same run, two fresh replicas warmed alike, alternating; the answers sent at once (each stream's tokens arrive together: long passes of their own either way), or trickled ${TRICKLE_MS.join(' or ')} ms apart per stream (a few tokens wait per stream).

${markdownTable(
  ['arrival', 'concurrent streams', 'before tok/s', 'after tok/s', 'after / before', 'chunk delay p50 / p99 ms, before', 'after', 'load (1 min) before / after'],
  result.crossRequestBatching.map((b) => [b.arrival, b.c, b.before.tokPerS, b.after.tokPerS, b.afterOverBefore, `${b.before.delayP50} / ${b.before.delayP99}`, `${b.after.delayP50} / ${b.after.delayP99}`, `${b.before.load1m} / ${b.after.load1m}`]),
)}

In process, without HTTP (bench/proxy.ts 2c): C teacher-forced streams on one engine (\`teacherForced\`, the scoring path of the proxy), each stream's ${TOKENS} tokens arriving k at a time, the next arrival once the last is scored; forward passes per scored token count the shared passes and the passes of their own.

${markdownTable(
  ['tokens per arrival', 'concurrent streams', 'before tok/s', 'after tok/s', 'after / before', 'passes per token before', 'after', 'load (1 min) before / after'],
  result.crossRequestBatchingInProcess.map((b) => [b.k, b.c, b.before.tokPerS, b.after.tokPerS, b.afterOverBefore, b.before.passesPerToken, b.after.passesPerToken, `${b.before.load1m} / ${b.after.load1m}`]),
)}

Each cell is the median of ${REPS} alternating runs of ${ROUNDS} requests per stream (in process: of one stream each). With one stream both replicas do the same (a lone token shares its pass with nobody; several take a pass of their own), so the one-stream rows show the run-to-run noise on this shared machine. Chunk delay: receipt at the client − send by the replay upstream, the chunks after each stream's first.

## Added latency per chunk

The replay upstream sends a chunk every ${PACE_MS} ms; delay = receipt at the client − send by the upstream (same process clock), chunks after the first.

${markdownTable(
  ['concurrent streams', 'chunks', 'direct p50 ms', 'direct p99 ms', 'proxied p50 ms', 'proxied p99 ms', 'added p50 ms', 'added p99 ms', 'first chunk direct / proxied ms', 'pass-through p50 / p99 ms'],
  Object.entries(result.chunkLatencyMs).map(([c, l]) => [c, l.chunks, l.direct.p50, l.direct.p99, l.proxied.p50, l.proxied.p99, l.addedP50, l.addedP99, `${l.firstChunk.direct} / ${l.firstChunk.proxied}`, `${l.passThrough.p50} / ${l.passThrough.p99}`]),
)}

"proxied" is the default (a chunk goes on once its tokens are scored and their alerts stored, as a token does in local serving); "pass-through" is \`--upstream-pass-through\` (chunks go on as they arrive; alerts may trail the text).

The first chunk waits for the prompt's scoring too (it runs while the upstream generates).

${machineMarkdown(machine)}
`;

writeJson(join(OUT, quick ? 'proxy-quick.json' : 'proxy.json'), result);
writeText(join(OUT, quick ? 'proxy-quick.md' : 'proxy.md'), md);
log(`wrote ${join(OUT, quick ? 'proxy-quick.md' : 'proxy.md')}`);
