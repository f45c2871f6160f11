/**
 * Just enough PromQL reading for the dashboard and rule checks: which metric names an expression
 * selects, and what it looks like once Grafana's variables are substituted.
 *
 * Not a parser: it removes what cannot be a metric name (strings, label matchers, range and
 * subquery brackets, grouping lists, numbers, durations), then keeps each identifier that is not a
 * function call, an aggregation, a keyword or an operator. Prometheus itself parses every query in
 * test/prometheus.test.ts; this only has to find names, and it errs on the side of finding too
 * many (a false positive fails the check loudly; a miss would hide a typo).
 */

/** PromQL words that are never metric names (aggregations, set and grouping keywords, literals). */
const KEYWORDS = new Set([
  'sum', 'min', 'max', 'avg', 'group', 'stddev', 'stdvar', 'count', 'count_values', 'bottomk', 'topk', 'quantile',
  'limitk', 'limit_ratio',
  'by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool', 'offset', 'and', 'or', 'unless', 'atan2',
  'inf', 'nan', 'start', 'end',
]);

const IDENT = /[A-Za-z_:][A-Za-z0-9_:]*/y;

/** Grafana template variables ($name, ${name}, ${name:fmt}, [[name]]). */
const GRAFANA_VAR = /\$\{[A-Za-z0-9_]+(?::[^}]*)?\}|\$[A-Za-z0-9_]+|\[\[[A-Za-z0-9_]+\]\]/g;

/** Removes quoted strings, so that label values and regexes cannot be read as names. */
function stripStrings(expr: string): string {
  return expr.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""');
}

/** Removes `{...}` matcher blocks, `[...]` ranges/subqueries and grouping label lists. */
function stripNonNames(expr: string): string {
  let s = stripStrings(expr);
  // `{__name__="x"}` selects by name: keep the name visible before matchers disappear.
  s = s.replace(/\{[^}]*\}/g, ' ');
  s = s.replace(/\[[^\]]*\]/g, ' ');
  s = s.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ');
  s = s.replace(GRAFANA_VAR, ' ');
  return s;
}

/** Metric names an expression selects, each once, in order of appearance. */
export function metricNames(expr: string): string[] {
  const names: string[] = [];
  // Names given as `{__name__="..."}` (before strings are stripped).
  for (const m of expr.matchAll(/__name__\s*=\s*"([^"]+)"/g)) names.push(m[1]);
  const s = stripNonNames(expr);
  let i = 0;
  while (i < s.length) {
    const c = s[i];
    if (/[0-9.]/.test(c)) {
      // A number, a duration (5m, 1h30m) or a hex/exponent literal: skip the whole token.
      const m = /[0-9.][0-9A-Za-z_.+-]*/y;
      m.lastIndex = i;
      const hit = m.exec(s);
      i += hit ? Math.max(1, hit[0].length) : 1;
      continue;
    }
    IDENT.lastIndex = i;
    const hit = IDENT.exec(s);
    if (!hit) {
      i++;
      continue;
    }
    const word = hit[0];
    i += word.length;
    const rest = s.slice(i).match(/^\s*(\S?)/);
    const next = rest ? rest[1] : '';
    if (next === '(') continue; // a function call or `sum(`
    if (KEYWORDS.has(word.toLowerCase())) continue;
    names.push(word);
  }
  return [...new Set(names)];
}

/**
 * The base metric family of a series name: histogram series (`_bucket`, `_sum`, `_count`) map to
 * their family when the family is a histogram; anything else maps to itself.
 */
export function familyOf(series: string, histograms: ReadonlySet<string>): string {
  for (const suffix of ['_bucket', '_sum', '_count']) {
    if (series.endsWith(suffix)) {
      const base = series.slice(0, -suffix.length);
      if (histograms.has(base)) return base;
    }
  }
  return series;
}

/** Series names the expression selects that are not in `known` (a set of series names). */
export function unknownMetrics(expr: string, known: ReadonlySet<string>): string[] {
  return metricNames(expr).filter((n) => !known.has(n));
}

/** `label_values(selector, label)` (Grafana's Prometheus variable query), or null. */
export function parseLabelValues(query: string): { selector: string; label: string } | null {
  const m = /^\s*label_values\(\s*(.*?)\s*,\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*$/s.exec(query);
  return m ? { selector: m[1], label: m[2] } : null;
}

/**
 * Replaces Grafana variables with values Prometheus accepts, e.g.
 * `{ __rate_interval: '15s', instance: '.*' }`. Unknown variables are left in place (so the query
 * fails to parse and the caller hears about it).
 */
export function substituteVariables(expr: string, values: Readonly<Record<string, string>>): string {
  return expr.replace(GRAFANA_VAR, (v) => {
    const name = v.replace(/^\$\{?|\[\[|\]\]$|\}$/g, '').replace(/:.*$/, '');
    return Object.hasOwn(values, name) ? values[name] : v;
  });
}
