/**
 * Periodic self-test: run a known concept injection through the real request path and check that
 * a probe fires. The result is a metric; a failure (no probe fired, or the run errored) is an alert.
 */
import type { Severity } from './config.js';
import type { AlertDraft } from './alert-log.js';
import type { CanaryResult } from './metrics.js';
import type { InferenceEvent } from './inference.js';

export interface CanaryDeps {
  /** Runs one admin-injected request; yields the inference events. */
  run(): AsyncGenerator<InferenceEvent>;
  raise(draft: AlertDraft): void;
  record(result: CanaryResult): void;
  model: string;
  concept: string;
  log: (msg: string, extra?: Record<string, unknown>) => void;
}

export class Canary {
  private timer: NodeJS.Timeout | undefined;
  private running: Promise<CanaryResult> | undefined;

  constructor(private readonly d: CanaryDeps) {}

  start(intervalSeconds: number): void {
    this.timer = setInterval(() => void this.runOnce(), intervalSeconds * 1000);
    this.timer.unref();
    void this.runOnce();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** One canary run (skipped if one is in flight). */
  runOnce(): Promise<CanaryResult> {
    this.running ??= this.execute().finally(() => {
      this.running = undefined;
    });
    return this.running;
  }

  private async execute(): Promise<CanaryResult> {
    let result: CanaryResult = 'failure';
    let detail = 'no probe fired on the canary injection';
    try {
      for await (const ev of this.d.run()) {
        if (ev.type === 'done' && ev.verdict.probes.some((p) => p.fired)) result = 'success';
      }
    } catch (e) {
      result = 'error';
      detail = `canary run failed: ${(e as Error).message}`;
    }
    this.d.record(result);
    if (result !== 'success') {
      this.d.log(detail, { concept: this.d.concept });
      const severity: Severity = 'critical';
      this.d.raise({
        requestId: `canary-${Date.now()}`,
        model: this.d.model,
        probeId: 'canary',
        probeLabel: `canary: injected concept "${this.d.concept}" went undetected`,
        severity,
        score: 0,
        threshold: 0,
        tokenIndex: -1,
        silent: false,
        verbalized: false,
        textExcerpt: detail,
        kind: 'canary_failure',
      });
    }
    return result;
  }
}
