/**
 * Verbalization: whether generated text says what the probe saw. One rule for the daemon's
 * `verbalized`/`silent` and the lab's trial labels: any configured phrase as a substring, or a
 * concept word as a whole word (Unicode letter/digit boundaries; singular or plural: the word's
 * trailing -s/-es is dropped when it is longer than 4 characters, then -s/-es is optional), all
 * case-insensitive, with whitespace runs and curly apostrophes normalised.
 */

/**
 * Streams text and reports whether it verbalises, across chunk boundaries. Keeps only a short
 * tail, so cost is linear in the text. Monotonic: once verbalised, it stays verbalised.
 */
export class VerbalizationDetector {
  private readonly phrases: string[];
  private readonly concepts: RegExp[];
  private readonly keep: number;
  private tail = '';
  private hit: string | null = null;

  constructor(phrases: readonly string[], conceptWords: readonly string[] = []) {
    this.phrases = phrases.map((p) => normalise(p)).filter((p) => p.length > 0);
    const words = conceptWords.map((w) => stem(normalise(w))).filter((w) => w.length > 0);
    // A concept must be followed by a non-letter to count (else "dust" would match "dusty" mid-stream);
    // finish() accepts the end of the text as a boundary.
    this.concepts = words.map((w) => new RegExp(`(?:^|[^\\p{L}\\p{N}])${escapeRegExp(w)}(?:s|es)?(?=[^\\p{L}\\p{N}]|$)`, 'u'));
    this.keep = Math.max(1, ...this.phrases.map((p) => p.length), ...words.map((w) => w.length + 4)) + 1;
  }

  get verbalized(): boolean {
    return this.hit !== null;
  }

  /** What matched first (phrase or concept word), or null. */
  get matched(): string | null {
    return this.hit;
  }

  push(text: string): boolean {
    if (this.hit !== null) return true;
    const window = normalise(this.tail + text, false);
    for (const p of this.phrases) {
      if (window.includes(p)) {
        this.hit = p;
        return true;
      }
    }
    for (const re of this.concepts) {
      // Mid-stream, a match ending at the window's end may continue in the next chunk: require a boundary char.
      const m = re.exec(window);
      if (m && m.index + m[0].length < window.length) {
        this.hit = m[0].replace(/^[^\p{L}\p{N}]/u, '');
        return true;
      }
    }
    // Keep a short tail; mark a cut through a word so that its rest does not pass for a whole word.
    const cut = window.length - this.keep;
    this.tail = cut > 0 ? (/[\p{L}\p{N}]/u.test(window[cut - 1]) ? 'x' : ' ') + window.slice(cut) : window;
    return false;
  }

  /** End of text: a concept word at the very end now counts. */
  finish(): boolean {
    if (this.hit !== null) return true;
    for (const re of this.concepts) {
      const m = re.exec(this.tail);
      if (m) {
        this.hit = m[0].replace(/^[^\p{L}\p{N}]/u, '');
        return true;
      }
    }
    return false;
  }
}

/** One-shot form for a whole text (the lab's trials): a phrase, or the concept word when given. */
export function verbalizes(text: string, phrases: readonly string[], concept: string | null): boolean {
  const d = new VerbalizationDetector(phrases, concept === null ? [] : [concept]);
  return d.push(text) || d.finish();
}

/** "Oceans" → "ocean", "volcanoes" → "volcano"; short words ("gas", "bus") stay whole. */
function stem(word: string): string {
  return word.length > 4 ? word.replace(/(es|s)$/, '') : word;
}

function normalise(s: string, trim = true): string {
  const out = s.toLowerCase().replace(/[\u2018\u2019]/g, "'").replace(/\s+/g, ' ');
  return trim ? out.trim() : out;
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}
