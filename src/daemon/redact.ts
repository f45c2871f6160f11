/**
 * Keeps keys out of logs, trace attributes and error details (docs/daemon.md, "Security model").
 *
 * Two layers, because either alone misses something:
 *   - `redactUrl`: every URL the daemon logs loses the value of any credential-like query
 *     parameter (`token`, `key`, `api_key`, …), whatever it holds: a wrong key may be someone's
 *     right key elsewhere. The fastify request serializer and the WebSocket connect log use it.
 *   - `SecretScrubber`: the configured keys themselves, replaced wherever they appear in a log line
 *     (raw, JSON-escaped or URL-encoded) before the line is written, so a key that reaches a log
 *     line some other way (an error message echoing input) still never reaches the output. Trace
 *     error messages go through the process-wide scrubber (`scrubSecrets`).
 */

export const REDACTED = '[REDACTED]';

/** Query parameters whose values are credentials. */
const SECRET_PARAM = /^(token|access[_-]?token|key|api[_-]?key|apikey|auth|authorization|password|secret)$/i;

/** `url` with the value of every credential-like query parameter replaced by [REDACTED]. */
export function redactUrl(url: string): string {
  const q = url.indexOf('?');
  if (q < 0) return url;
  const hash = url.indexOf('#', q);
  const query = hash < 0 ? url.slice(q + 1) : url.slice(q + 1, hash);
  const parts = query.split('&').map((part) => {
    const eq = part.indexOf('=');
    const rawName = eq < 0 ? part : part.slice(0, eq);
    let name = rawName;
    try {
      name = decodeURIComponent(rawName.replace(/\+/g, ' '));
    } catch {
      // a malformed escape: test the raw name
    }
    return SECRET_PARAM.test(name.trim()) ? `${rawName}=${REDACTED}` : part;
  });
  return `${url.slice(0, q + 1)}${parts.join('&')}${hash < 0 ? '' : url.slice(hash)}`;
}

/** Replaces known secrets (and their JSON-escaped and URL-encoded spellings) in text. */
export class SecretScrubber {
  private readonly needles: string[];

  constructor(secrets: readonly string[]) {
    const set = new Set<string>();
    for (const s of secrets) {
      if (s.length === 0) continue;
      set.add(s);
      set.add(JSON.stringify(s).slice(1, -1));
      set.add(encodeURIComponent(s));
    }
    // Longest first, so a key that contains another is replaced whole.
    this.needles = [...set].sort((a, b) => b.length - a.length);
  }

  get empty(): boolean {
    return this.needles.length === 0;
  }

  scrub(text: string): string {
    let out = text;
    for (const n of this.needles) if (out.includes(n)) out = out.split(n).join(REDACTED);
    return out;
  }

  /** A pino destination that scrubs each line, then writes it to `dest`. */
  stream(dest: Pick<NodeJS.WritableStream, 'write'>): { write(line: string): boolean } {
    return { write: (line: string) => dest.write(this.empty ? line : this.scrub(line)) };
  }
}

let processScrubber = new SecretScrubber([]);

/** The daemon registers its keys once (buildServer); tracing scrubs error messages with them. */
export function setProcessSecrets(secrets: readonly string[]): void {
  processScrubber = new SecretScrubber(secrets);
}

export function scrubSecrets(text: string): string {
  return processScrubber.empty ? text : processScrubber.scrub(text);
}
