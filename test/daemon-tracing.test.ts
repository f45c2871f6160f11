import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import * as tracing from '@opentelemetry/sdk-trace-node';
import { describe, expect, it } from 'vitest';
import { lwError } from '../src/errors.js';
import type { RequestVerdict } from '../src/daemon/monitor.js';
import { EVALUATION_EVENT, startRequestSpan, startTelemetryFromEnv } from '../src/daemon/tracing.js';

const verdict: RequestVerdict = {
  requestId: 'chatcmpl-1',
  model: 'tiny',
  verbalized: false,
  verbalizedAt: null,
  probes: {
    'probe.a': { probeId: 'probe.a', probeLabel: 'injected concept', maxScore: 0.93, finalScore: 0.8, threshold: 0.5, fired: true, alertIds: [7, 9], verbalized: false, silent: true, firstFiredAt: 3 },
    'probe.b': { probeId: 'probe.b', probeLabel: 'other', maxScore: 0.1, finalScore: 0.05, threshold: 0.5, fired: false, alertIds: [], verbalized: false, silent: false, firstFiredAt: null },
  },
};

describe('tracing', () => {
  it('request span with GenAI attributes, prefill/decode children and evaluation events', () => {
    const exporter = new tracing.InMemorySpanExporter();
    const provider = new tracing.BasicTracerProvider({ spanProcessors: [new tracing.SimpleSpanProcessor(exporter)] });
    const t = startRequestSpan({ operation: 'chat', model: 'tiny', responseId: 'chatcmpl-1', maxTokens: 16, temperature: 0, tracer: provider.getTracer('latentwatch') });
    t.startPrefill(12);
    t.startDecode(); // ends prefill
    t.endDecode(4);
    t.setUsage(12, 4);
    t.setFinishReasons(['stop']);
    t.recordVerdict(verdict);
    t.end();
    t.end(); // once
    const spans = exporter.getFinishedSpans();
    expect(spans.map((s) => s.name).sort()).toEqual(['chat tiny', 'decode', 'prefill']);
    const root = spans.find((s) => s.name === 'chat tiny')!;
    for (const child of spans.filter((s) => s !== root)) {
      expect(child.parentSpanContext?.spanId).toBe(root.spanContext().spanId);
      expect(child.spanContext().traceId).toBe(root.spanContext().traceId);
    }
    expect(root.attributes).toMatchObject({
      'gen_ai.operation.name': 'chat',
      'gen_ai.request.model': 'tiny',
      'gen_ai.request.max_tokens': 16,
      'gen_ai.request.temperature': 0,
      'gen_ai.response.id': 'chatcmpl-1',
      'gen_ai.usage.input_tokens': 12,
      'gen_ai.usage.output_tokens': 4,
      'gen_ai.response.finish_reasons': ['stop'],
      'latentwatch.probes.fired': ['probe.a'],
      'latentwatch.silent': true,
    });
    const events = root.events.filter((e) => e.name === EVALUATION_EVENT);
    expect(events.map((e) => [e.attributes?.['gen_ai.evaluation.name'], e.attributes?.['gen_ai.evaluation.score.label'], e.attributes?.['gen_ai.evaluation.score.value']])).toEqual([
      ['probe.a', 'silent', 0.93],
      ['probe.b', 'not_fired', 0.1],
    ]);
    expect(events[0].attributes).toMatchObject({ 'gen_ai.response.id': 'chatcmpl-1', 'latentwatch.probe.alert_ids': [7, 9], 'latentwatch.probe.threshold': 0.5 });
    expect(spans.find((s) => s.name === 'decode')?.attributes['gen_ai.usage.output_tokens']).toBe(4);
  });

  it('an error marks the span with error.type and ERROR status', () => {
    const exporter = new tracing.InMemorySpanExporter();
    const provider = new tracing.BasicTracerProvider({ spanProcessors: [new tracing.SimpleSpanProcessor(exporter)] });
    const t = startRequestSpan({ operation: 'text_completion', model: 'tiny', tracer: provider.getTracer('latentwatch') });
    t.startPrefill();
    t.end(lwError('LW_ERR_ENGINE_SESSION_FAILED', 'boom'));
    const root = exporter.getFinishedSpans().find((s) => s.name === 'text_completion tiny')!;
    expect(root.attributes['error.type']).toBe('LW_ERR_ENGINE_SESSION_FAILED');
    expect(root.status.code).toBe(2);
    expect(exporter.getFinishedSpans().map((s) => s.name)).toContain('prefill');
  });

  it('without an SDK, spans are no-ops and nothing is exported', async () => {
    expect(await startTelemetryFromEnv({})).toBeNull();
    expect(await startTelemetryFromEnv({ LATENTWATCH_OTEL: '1', OTEL_SDK_DISABLED: 'true' })).toBeNull();
    const t = startRequestSpan({ operation: 'chat', model: 'tiny' });
    expect(t.span.isRecording()).toBe(false);
    t.end();
  });

  it('OTEL_EXPORTER_OTLP_ENDPOINT switches on the SDK and OTLP/HTTP export', async () => {
    const bodies: { url: string; body: string }[] = [];
    const receiver = createServer((req, res) => {
      let body = '';
      req.on('data', (d: Buffer) => (body += d.toString()));
      req.on('end', () => {
        bodies.push({ url: req.url ?? '', body });
        res.writeHead(200, { 'content-type': 'application/json' }).end('{}');
      });
    });
    await new Promise<void>((r) => receiver.listen(0, '127.0.0.1', r));
    const port = (receiver.address() as AddressInfo).port;
    const handle = await startTelemetryFromEnv({ OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${port}/`, OTEL_SERVICE_NAME: 'lw-test' }, '0.1.0');
    expect(handle?.endpoint).toBe(`http://127.0.0.1:${port}/v1/traces`);
    const t = startRequestSpan({ operation: 'chat', model: 'tiny' });
    expect(t.span.isRecording()).toBe(true);
    t.recordVerdict(verdict);
    t.end();
    await handle?.shutdown();
    await new Promise<void>((r) => receiver.close(() => r()));
    expect(bodies.length).toBeGreaterThan(0);
    expect(bodies[0].url).toBe('/v1/traces');
    const all = bodies.map((b) => b.body).join('\n');
    expect(all).toContain('chat tiny');
    expect(all).toContain(EVALUATION_EVENT);
    expect(all).toContain('lw-test');
  });
});
