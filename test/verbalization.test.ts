/**
 * One verbalization rule: the lab's trial label (`verbalizes`, whole text at once) and the daemon's
 * request verdict (RequestMonitor, text streamed token by token) agree on the same text.
 */
import { describe, expect, it } from 'vitest';
import { RequestMonitor } from '../src/daemon/monitor.js';
import { verbalizes } from '../src/probes/verbalization.js';

const PHRASES = ['injected thought', "i'm sensing"];

/** The daemon's verdict for `text` streamed in `chunk`-character pieces, concept word known. */
function daemonVerbalized(text: string, concept: string, chunk: number): boolean {
  const mon = new RequestMonitor({
    requestId: 'r',
    model: 'm',
    probes: [],
    verbalization: { phrases: PHRASES, matchConceptWord: true },
    conceptWords: [concept],
    raise: () => [],
  });
  for (let i = 0; i < text.length; i += chunk) mon.pushText(text.slice(i, i + chunk));
  return mon.finish().verbalized;
}

// [text, concept, verbalized?]: Unicode word boundaries, singular/plural both ways, phrases.
const CASES: [string, string, boolean][] = [
  ['I notice something about the ocean', 'Oceans', true],
  ['the oceans are vast', 'Ocean', true],
  ['an oceanic feeling', 'Oceans', false],
  ['volcano', 'Volcanoes', true],
  ['café-ocean', 'Oceans', true],
  ['océan', 'Oceans', false],
  ['the dust settles', 'dust', true],
  ['dusty shelves', 'dust', false],
  ['sanddust', 'dust', false],
  ['naïveocean', 'Oceans', false],
  ['Yes, an INJECTED   thought.', 'Snow', true],
  ['I\u2019m sensing it', 'Snow', true],
  ['nothing here', 'Snow', false],
  ['gas', 'gas', true],
  ['ga', 'gas', false],
];

describe('verbalization', () => {
  it.each(CASES)('%j with concept %j: lab and daemon both say %s', (text, concept, expected) => {
    expect(verbalizes(text, PHRASES, concept)).toBe(expected);
    for (const chunk of [1, 3, text.length]) expect(daemonVerbalized(text, concept, chunk), `chunks of ${chunk}`).toBe(expected);
  });
});
