/**
 * Traces through @opentelemetry/api only. Without an SDK (the default) every call is a no-op and
 * nothing is exported; `startTelemetryFromEnv` loads the Node SDK and the OTLP/HTTP exporter,
 * dynamically, only when the environment asks for it.
 *
 * Spans (OpenTelemetry GenAI semantic conventions):
 *   "{gen_ai.operation.name} {gen_ai.request.model}"   e.g. "chat qwen2-code-16m" (INTERNAL)
 *     gen_ai.operation.name ('chat' | 'text_completion'), gen_ai.provider.name, gen_ai.request.model,
 *     gen_ai.request.max_tokens / temperature / top_p / top_k / seed, gen_ai.response.id,
 *     gen_ai.response.model, gen_ai.usage.input_tokens, gen_ai.usage.output_tokens,
 *     gen_ai.response.finish_reasons, error.type on failure;
 *     latentwatch.probes.fired (probe ids), latentwatch.silent (a probe fired and the text stayed silent)
 *     ├─ "prefill"  the prompt's forward passes
 *     └─ "decode"   the generation loop
 *   Verdict: one `gen_ai.evaluation.result` event per probe on the request span:
 *     gen_ai.evaluation.name = probe id, gen_ai.evaluation.score.value = max aggregated score,
 *     gen_ai.evaluation.score.label = 'silent' | 'verbalized' | 'not_fired',
 *     gen_ai.evaluation.explanation, gen_ai.response.id, and latentwatch.probe.* details.
 */
import { context, SpanKind, SpanStatusCode, trace, type Attributes, type Context, type Span, type Tracer } from '@opentelemetry/api';
import type { RequestVerdict } from './monitor.js';
import { scrubSecrets } from './redact.js';

export const TRACER_NAME = 'latentwatch';
export const EVALUATION_EVENT = 'gen_ai.evaluation.result';
export type GenAIOperation = 'chat' | 'text_completion';
export type EvaluationLabel = 'silent' | 'verbalized' | 'not_fired';

export interface RequestSpanOptions {
  operation: GenAIOperation;
  model: string;
  /** The response id (chatcmpl-…); also gen_ai.response.id on verdict events. */
  responseId?: string;
  maxTokens?: number;
  temperature?: number;
  topP?: number;
  topK?: number;
  seed?: number;
  stream?: boolean;
  /** Default: the global tracer named 'latentwatch' (a no-op without an SDK). */
  tracer?: Tracer;
  /** Default: the active context (e.g. an HTTP server span's). */
  parent?: Context;
}

/** One request's span and its children. Every method is safe to call in any order, and once. */
export class RequestTrace {
  readonly span: Span;
  private readonly tracer: Tracer;
  private readonly ctx: Context;
  private readonly model: string;
  private readonly responseId: string | undefined;
  private prefill: Span | undefined;
  private decode: Span | undefined;
  private ended = false;

  constructor(options: RequestSpanOptions) {
    this.tracer = options.tracer ?? trace.getTracer(TRACER_NAME);
    this.model = options.model;
    this.responseId = options.responseId;
    const attributes: Attributes = {
      'gen_ai.operation.name': options.operation,
      'gen_ai.provider.name': 'latentwatch',
      'gen_ai.request.model': options.model,
    };
    if (options.maxTokens !== undefined) attributes['gen_ai.request.max_tokens'] = options.maxTokens;
    if (options.temperature !== undefined) attributes['gen_ai.request.temperature'] = options.temperature;
    if (options.topP !== undefined) attributes['gen_ai.request.top_p'] = options.topP;
    if (options.topK !== undefined) attributes['gen_ai.request.top_k'] = options.topK;
    if (options.seed !== undefined) attributes['gen_ai.request.seed'] = options.seed;
    if (options.stream !== undefined) attributes['latentwatch.request.stream'] = options.stream;
    if (options.responseId !== undefined) attributes['gen_ai.response.id'] = options.responseId;
    const parent = options.parent ?? context.active();
    this.span = this.tracer.startSpan(`${options.operation} ${options.model}`, { kind: SpanKind.INTERNAL, attributes }, parent);
    this.ctx = trace.setSpan(parent, this.span);
  }

  /** Context with the request span active (to parent other work). */
  get context(): Context {
    return this.ctx;
  }

  startPrefill(promptTokens?: number): void {
    if (this.prefill || this.ended) return;
    const attributes: Attributes = { 'gen_ai.request.model': this.model };
    if (promptTokens !== undefined) attributes['gen_ai.usage.input_tokens'] = promptTokens;
    this.prefill = this.tracer.startSpan('prefill', { kind: SpanKind.INTERNAL, attributes }, this.ctx);
  }

  endPrefill(): void {
    this.prefill?.end();
  }

  startDecode(): void {
    if (this.decode || this.ended) return;
    this.endPrefill();
    this.decode = this.tracer.startSpan('decode', { kind: SpanKind.INTERNAL, attributes: { 'gen_ai.request.model': this.model } }, this.ctx);
  }

  endDecode(outputTokens?: number): void {
    if (this.decode && outputTokens !== undefined) this.decode.setAttribute('gen_ai.usage.output_tokens', outputTokens);
    this.decode?.end();
  }

  setUsage(inputTokens: number, outputTokens: number): void {
    this.span.setAttributes({ 'gen_ai.usage.input_tokens': inputTokens, 'gen_ai.usage.output_tokens': outputTokens });
  }

  setFinishReasons(reasons: readonly string[]): void {
    this.span.setAttribute('gen_ai.response.finish_reasons', [...reasons]);
  }

  /** The monitor's verdict: one gen_ai.evaluation.result event per probe, plus summary attributes. */
  recordVerdict(verdict: RequestVerdict): void {
    const fired: string[] = [];
    let silent = false;
    for (const p of Object.values(verdict.probes)) {
      const label: EvaluationLabel = !p.fired ? 'not_fired' : p.verbalized ? 'verbalized' : 'silent';
      if (p.fired) fired.push(p.probeId);
      silent ||= p.silent;
      const attributes: Attributes = {
        'gen_ai.evaluation.name': p.probeId,
        'gen_ai.evaluation.score.label': label,
        'gen_ai.evaluation.explanation': `probe "${p.probeLabel}": max aggregated score ${fmt(p.maxScore)} against threshold ${fmt(p.threshold)}; ${p.alertIds.length} alert(s); the text ${p.verbalized ? 'verbalised' : 'did not verbalise'} it`,
        'latentwatch.probe.threshold': p.threshold,
        'latentwatch.probe.fired': p.fired,
        'latentwatch.probe.alert_ids': p.alertIds,
        'latentwatch.verbalized': p.verbalized,
      };
      if (p.maxScore !== null) attributes['gen_ai.evaluation.score.value'] = p.maxScore;
      if (p.finalScore !== null) attributes['latentwatch.probe.final_score'] = p.finalScore;
      if (p.firstFiredAt !== null) attributes['latentwatch.probe.first_fired_at'] = p.firstFiredAt;
      if (this.responseId !== undefined) attributes['gen_ai.response.id'] = this.responseId;
      this.span.addEvent(EVALUATION_EVENT, attributes);
    }
    this.span.setAttributes({ 'latentwatch.probes.fired': fired, 'latentwatch.silent': silent, 'latentwatch.verbalized': verdict.verbalized });
  }

  /** End children and the request span; an error sets error.type and ERROR status. */
  end(error?: unknown): void {
    if (this.ended) return;
    this.ended = true;
    this.endPrefill();
    this.endDecode();
    if (error !== undefined) {
      const code = (error as { code?: unknown }).code;
      const type = typeof code === 'string' ? code : error instanceof Error ? error.name : 'Error';
      this.span.setAttribute('error.type', type);
      // Error text can echo input; no configured key reaches a trace attribute (redact.ts).
      const message = scrubSecrets(error instanceof Error ? error.message : String(error));
      this.span.setStatus({ code: SpanStatusCode.ERROR, message });
      if (error instanceof Error) this.span.recordException({ name: error.name, message, ...(error.stack === undefined ? {} : { stack: scrubSecrets(error.stack) }) });
    }
    this.span.end();
  }
}

export function startRequestSpan(options: RequestSpanOptions): RequestTrace {
  return new RequestTrace(options);
}

function fmt(v: number | null): string {
  return v === null ? 'n/a' : Number.isInteger(v) ? String(v) : v.toFixed(4);
}

export interface TelemetryHandle {
  /** Flush and stop the SDK. */
  shutdown(): Promise<void>;
  /** Where traces go. */
  endpoint: string;
}

/**
 * Start OpenTelemetry tracing (the Node trace SDK with the OTLP/HTTP exporter) when the environment asks:
 * OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT set, or LATENTWATCH_OTEL=1
 * (then the exporter's default, http://localhost:4318/v1/traces). OTEL_SDK_DISABLED=true wins.
 * Returns null (and loads nothing) otherwise. Traces only: no metrics or logs exporters, no
 * auto-instrumentation.
 */
export async function startTelemetryFromEnv(env: Readonly<Record<string, string | undefined>>, version = '0.0.0'): Promise<TelemetryHandle | null> {
  if (env.OTEL_SDK_DISABLED?.toLowerCase() === 'true') return null;
  const base = env.OTEL_EXPORTER_OTLP_ENDPOINT?.trim();
  const traces = env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT?.trim();
  if (!base && !traces && env.LATENTWATCH_OTEL !== '1') return null;
  const endpoint = traces || (base ? `${base.replace(/\/+$/, '')}/v1/traces` : 'http://localhost:4318/v1/traces');
  // The trace SDK and the OTLP/HTTP exporter only: @opentelemetry/sdk-node would pull gRPC, Zipkin
  // and the metrics and logs SDKs for a traces-only setup.
  const [{ NodeTracerProvider, BatchSpanProcessor }, { defaultResource, detectResources, envDetector, resourceFromAttributes }, { OTLPTraceExporter }] = await Promise.all([
    import('@opentelemetry/sdk-trace-node'),
    import('@opentelemetry/resources'),
    import('@opentelemetry/exporter-trace-otlp-http'),
  ]);
  const resource = defaultResource()
    .merge(detectResources({ detectors: [envDetector] })) // OTEL_RESOURCE_ATTRIBUTES
    .merge(resourceFromAttributes({ 'service.name': env.OTEL_SERVICE_NAME?.trim() || 'latentwatch', 'service.version': version }));
  const provider = new NodeTracerProvider({ resource, spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url: endpoint }))] });
  provider.register();
  return { endpoint, shutdown: () => provider.shutdown() };
}
